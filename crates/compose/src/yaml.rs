//! The YAML tree a compose file is read into: plain values with the line each came
//! from, mapping keys as strings in the file's order, anchors and aliases resolved by
//! the parser and `<<` merge keys applied here.

use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarOwned, YamlDataOwned};
use std::fmt;

/// A value of the file, with its (1-based) line; 0 for values made by the loader.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub line: usize,
    /// Which of the `-c` files it came from (an index into the loader's list).
    pub file: usize,
    pub v: V,
}

#[derive(Clone, Debug, PartialEq)]
pub enum V {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One `key: value` of a mapping.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub line: usize,
    pub value: Node,
}

impl Node {
    pub fn new(line: usize, v: V) -> Node {
        Node { line, file: 0, v }
    }

    /// Marks every node of the tree as coming from file `file`.
    pub fn set_file(&mut self, file: usize) {
        self.file = file;
        match &mut self.v {
            V::Seq(items) => items.iter_mut().for_each(|i| i.set_file(file)),
            V::Map(entries) => entries.iter_mut().for_each(|e| e.value.set_file(file)),
            _ => {}
        }
    }

    pub fn str(s: impl Into<String>) -> Node {
        Node::new(0, V::Str(s.into()))
    }

    pub fn map(&self) -> Option<&[Entry]> {
        match &self.v {
            V::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn map_mut(&mut self) -> Option<&mut Vec<Entry>> {
        match &mut self.v {
            V::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn seq(&self) -> Option<&[Node]> {
        match &self.v {
            V::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.map()?.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.map_mut()?
            .iter_mut()
            .find(|e| e.key == key)
            .map(|e| &mut e.value)
    }

    /// A scalar as text (`3` and `"3"` alike); None for null, lists and mappings.
    pub fn scalar(&self) -> Option<String> {
        match &self.v {
            V::Bool(b) => Some(b.to_string()),
            V::Int(i) => Some(i.to_string()),
            V::Float(f) => Some(f.to_string()),
            V::Str(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self.v {
            V::Null => "null",
            V::Bool(_) => "a boolean",
            V::Int(_) => "an integer",
            V::Float(_) => "a number",
            V::Str(_) => "a string",
            V::Seq(_) => "a list",
            V::Map(_) => "a mapping",
        }
    }
}

/// A file that cannot be read as YAML.
#[derive(Debug)]
pub struct ParseError {
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.msg)
    }
}

/// Reads the first document of `text` (an empty file is an empty mapping).
pub fn parse(text: &str) -> Result<Node, ParseError> {
    let docs = MarkedYamlOwned::load_from_str(text).map_err(|e| ParseError {
        line: e.marker().line(),
        msg: e.info().to_string(),
    })?;
    match docs.into_iter().next() {
        None => Ok(Node::new(1, V::Map(Vec::new()))),
        Some(doc) => convert(doc),
    }
}

fn convert(n: MarkedYamlOwned) -> Result<Node, ParseError> {
    let line = n.span.start.line();
    let v = match n.data {
        YamlDataOwned::Value(s) => match s {
            ScalarOwned::Null => V::Null,
            ScalarOwned::Boolean(b) => V::Bool(b),
            ScalarOwned::Integer(i) => V::Int(i),
            ScalarOwned::FloatingPoint(f) => V::Float(f.into_inner()),
            ScalarOwned::String(s) => V::Str(s),
        },
        YamlDataOwned::Representation(s, _, _) => V::Str(s),
        YamlDataOwned::Tagged(_, inner) => return convert(*inner),
        YamlDataOwned::Sequence(items) => {
            V::Seq(items.into_iter().map(convert).collect::<Result<_, _>>()?)
        }
        YamlDataOwned::Mapping(m) => {
            let mut entries: Vec<Entry> = Vec::new();
            let mut merges: Vec<Node> = Vec::new();
            for (k, v) in m {
                let kline = k.span.start.line();
                let key = match convert(k)?.scalar() {
                    Some(s) => s,
                    None => {
                        return Err(ParseError {
                            line: kline,
                            msg: "a mapping key must be a plain value".into(),
                        })
                    }
                };
                let value = convert(v)?;
                if key == "<<" {
                    merges.push(value);
                    continue;
                }
                if entries.iter().any(|e| e.key == key) {
                    return Err(ParseError {
                        line: kline,
                        msg: format!("the key {key:?} appears twice in one mapping"),
                    });
                }
                entries.push(Entry {
                    key,
                    line: kline,
                    value,
                });
            }
            // `<<: *anchor` or `<<: [*a, *b]`: keys not given here come from the merged
            // mappings, the first that has them.
            for m in merges {
                let sources = match m.v {
                    V::Seq(items) => items,
                    _ => vec![m],
                };
                for src in sources {
                    let V::Map(src_entries) = src.v else {
                        return Err(ParseError {
                            line: src.line,
                            msg: "a merge key (<<) takes a mapping or a list of mappings".into(),
                        });
                    };
                    for e in src_entries {
                        if !entries.iter().any(|x| x.key == e.key) {
                            entries.push(e);
                        }
                    }
                }
            }
            V::Map(entries)
        }
        YamlDataOwned::Alias(_) | YamlDataOwned::BadValue => {
            return Err(ParseError {
                line,
                msg: "an alias to an unknown anchor, or one that expands too far".into(),
            })
        }
    };
    Ok(Node::new(line, v))
}

/// Writes a tree as YAML that reads back as the same tree (2-space indent, the keys in
/// their order, strings quoted only where a plain scalar would read differently).
pub fn emit(n: &Node) -> String {
    let mut out = String::new();
    emit_block(n, 0, &mut out);
    out
}

fn emit_block(n: &Node, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match &n.v {
        V::Map(m) if !m.is_empty() => {
            for e in m {
                out.push_str(&pad);
                out.push_str(&scalar_text(&e.key));
                out.push(':');
                emit_value(&e.value, indent, out);
            }
        }
        V::Seq(s) if !s.is_empty() => {
            for item in s {
                out.push_str(&pad);
                out.push('-');
                match &item.v {
                    V::Map(m) if !m.is_empty() => {
                        // The first key on the dash's line, the rest below it.
                        let mut first = String::new();
                        emit_block(item, indent + 2, &mut first);
                        out.push(' ');
                        out.push_str(first.trim_start());
                    }
                    _ => emit_value(item, indent, out),
                }
            }
        }
        _ => {
            out.push_str(&pad);
            out.push_str(&inline(n));
            out.push('\n');
        }
    }
}

fn emit_value(v: &Node, indent: usize, out: &mut String) {
    match &v.v {
        V::Map(m) if !m.is_empty() => {
            out.push('\n');
            emit_block(v, indent + 2, out);
        }
        V::Seq(s) if !s.is_empty() => {
            out.push('\n');
            emit_block(v, indent + 2, out);
        }
        _ => {
            out.push(' ');
            out.push_str(&inline(v));
            out.push('\n');
        }
    }
}

fn inline(n: &Node) -> String {
    match &n.v {
        V::Null => "null".into(),
        V::Bool(b) => b.to_string(),
        V::Int(i) => i.to_string(),
        V::Float(f) => {
            let s = f.to_string();
            if s.contains(['.', 'e', 'i', 'N']) {
                s
            } else {
                format!("{s}.0")
            }
        }
        V::Str(s) => scalar_text(s),
        V::Seq(_) => "[]".into(),
        V::Map(_) => "{}".into(),
    }
}

/// A string as a plain scalar when it reads back as the same string, else quoted.
fn scalar_text(s: &str) -> String {
    let plain = !s.is_empty()
        && s.trim() == s
        && !s.contains(['\n', '\t', '"', '\'', '#', '\\'])
        && !s.contains(": ")
        && !s.ends_with(':')
        && !s.starts_with([
            '-', '?', ':', ',', '[', ']', '{', '}', '&', '*', '!', '|', '>', '%', '@', '`',
        ])
        && !s.contains([',', '[', ']', '{', '}'])
        && matches!(
            parse(s).map(|n| n.v),
            Ok(V::Str(ref t)) if t == s
        );
    if plain {
        return s.to_string();
    }
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            c if (c as u32) < 0x20 => q.push_str(&format!("\\x{:02x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_merge_keys_and_anchors() {
        let n = parse(
            "x-common: &common\n  image: busybox\n  user: nobody\nservices:\n  web:\n    <<: *common\n    user: root\n",
        )
        .unwrap();
        let web = n.get("services").unwrap().get("web").unwrap();
        assert_eq!(
            web.get("image").unwrap().scalar().as_deref(),
            Some("busybox")
        );
        assert_eq!(web.get("user").unwrap().scalar().as_deref(), Some("root"));
        assert_eq!(web.map().unwrap()[0].line, 7);
        assert_eq!(n.get("services").unwrap().map().unwrap()[0].line, 5);
    }

    #[test]
    fn a_duplicate_key_and_bad_yaml_name_their_line() {
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(
            e.msg.contains("duplicated") || e.msg.contains("twice"),
            "{e}"
        );
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.line >= 1, "{e}");
    }

    #[test]
    fn emitted_yaml_reads_back_the_same() {
        let text = "version: \"3.8\"\nservices:\n  web:\n    image: nginx:1.25\n    command: [\"sh\", \"-c\", \"echo 'a: b' # c\"]\n    environment:\n      A: \"true\"\n      B: \"\"\n      C: null\n      D: 3\n      E: \"-x\"\n    ports:\n      - target: 80\n        published: 8080\n      - \"9000:9000\"\n    labels: []\n";
        let n = parse(text).unwrap();
        let out = emit(&n);
        let back = parse(&out).unwrap();
        fn strip(n: &Node) -> Node {
            Node::new(
                0,
                match &n.v {
                    V::Seq(s) => V::Seq(s.iter().map(strip).collect()),
                    V::Map(m) => V::Map(
                        m.iter()
                            .map(|e| Entry {
                                key: e.key.clone(),
                                line: 0,
                                value: strip(&e.value),
                            })
                            .collect(),
                    ),
                    v => v.clone(),
                },
            )
        }
        assert_eq!(strip(&back), strip(&n), "{out}");
    }
}

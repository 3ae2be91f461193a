//! `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`,
//! `${VAR?error}` and `$$` in a compose file's values, as `docker stack deploy` reads
//! them.

use crate::yaml::{Node, V};

/// Where values come from: the environment first, then the `.env` file.
pub trait Lookup {
    fn get(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Lookup for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Replaces the variables in one string.
pub fn string(s: &str, env: &dyn Lookup) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = closing_brace(body) else {
                return Err(format!("Invalid template: {s:?}"));
            };
            out.push_str(&braced(&body[..end], s, env)?);
            rest = &body[end + 1..];
        } else {
            let n = name_len(after);
            if n == 0 {
                return Err(format!("Invalid template: {s:?}"));
            }
            out.push_str(&env.get(&after[..n]).unwrap_or_default());
            rest = &after[n..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The end of `${...}`, allowing nested `${...}` in a default.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let b = body.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn name_len(s: &str) -> usize {
    let mut n = 0;
    for (i, c) in s.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            break;
        }
        n = i + c.len_utf8();
    }
    n
}

fn braced(body: &str, whole: &str, env: &dyn Lookup) -> Result<String, String> {
    let n = name_len(body);
    if n == 0 {
        return Err(format!("Invalid template: {whole:?}"));
    }
    let name = &body[..n];
    let op = &body[n..];
    let value = env.get(name);
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    let (kind, arg) = if op.is_empty() {
        return Ok(value.unwrap_or_default());
    } else if let Some(a) = op.strip_prefix(":-") {
        ("default-empty", a)
    } else if let Some(a) = op.strip_prefix(":?") {
        ("required-empty", a)
    } else if let Some(a) = op.strip_prefix('-') {
        ("default", a)
    } else if let Some(a) = op.strip_prefix('?') {
        ("required", a)
    } else {
        return Err(format!("Invalid template: {whole:?}"));
    };
    let present = match kind {
        "default-empty" | "required-empty" => set_nonempty,
        _ => value.is_some(),
    };
    if present {
        return Ok(value.unwrap_or_default());
    }
    let arg = string(arg, env)?;
    match kind {
        "default-empty" | "default" => Ok(arg),
        _ => Err(format!(
            "required variable {name} is missing a value: {arg}"
        )),
    }
}

/// Replaces the variables in every string value of a tree (keys are left as they are).
/// The error names the line.
pub fn tree(n: &mut Node, env: &dyn Lookup) -> Result<(), (usize, String)> {
    match &mut n.v {
        V::Str(s) if s.contains('$') => {
            *s = string(s, env).map_err(|e| (n.line, e))?;
        }
        V::Seq(items) => {
            for i in items {
                tree(i, env)?;
            }
        }
        V::Map(entries) => {
            for e in entries {
                tree(&mut e.value, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads a `.env` file: `KEY=VALUE` lines, `#` comments, optional `export `, values
/// optionally in single or double quotes.
pub fn dotenv(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let l = l.strip_prefix("export ").unwrap_or(l);
        let Some((k, v)) = l.split_once('=') else {
            return Err(format!("line {}: {line:?} is not KEY=VALUE", i + 1));
        };
        let k = k.trim();
        if name_len(k) != k.len() || k.is_empty() {
            return Err(format!("line {}: {k:?} is not a variable name", i + 1));
        }
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            v[1..v.len() - 1].to_string()
        } else {
            // An unquoted value ends at a ` #` comment.
            v.split(" #").next().unwrap_or("").trim_end().to_string()
        };
        out.push((k.to_string(), v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TAG" => Some("1.25".into()),
            "EMPTY" => Some(String::new()),
            "Port_2" => Some("8080".into()),
            _ => None,
        }
    }

    #[test]
    fn each_form() {
        let e = &env;
        assert_eq!(string("nginx:$TAG", e).unwrap(), "nginx:1.25");
        assert_eq!(string("nginx:${TAG}-x", e).unwrap(), "nginx:1.25-x");
        assert_eq!(string("$Port_2/tcp", e).unwrap(), "8080/tcp");
        assert_eq!(string("${UNSET}", e).unwrap(), "");
        assert_eq!(string("${UNSET:-d}", e).unwrap(), "d");
        assert_eq!(string("${EMPTY:-d}", e).unwrap(), "d");
        assert_eq!(string("${UNSET-d}", e).unwrap(), "d");
        assert_eq!(string("${EMPTY-d}", e).unwrap(), "");
        assert_eq!(string("${UNSET:-${TAG}}", e).unwrap(), "1.25");
        assert_eq!(string("cost $$5 $${TAG}", e).unwrap(), "cost $5 ${TAG}");
        assert_eq!(string("${TAG:?need it}", e).unwrap(), "1.25");
        assert_eq!(
            string("${EMPTY:?set EMPTY}", e).unwrap_err(),
            "required variable EMPTY is missing a value: set EMPTY"
        );
        assert_eq!(string("${EMPTY?x}", e).unwrap(), "");
        assert_eq!(
            string("${UNSET?no tag}", e).unwrap_err(),
            "required variable UNSET is missing a value: no tag"
        );
        assert!(string("${TAG", e)
            .unwrap_err()
            .starts_with("Invalid template"));
        assert!(string("${TAG:+x}", e)
            .unwrap_err()
            .starts_with("Invalid template"));
        assert!(string("a $ b", e)
            .unwrap_err()
            .starts_with("Invalid template"));
    }

    #[test]
    fn dotenv_lines() {
        let v = dotenv("# c\nA=1\nexport B = \"two words\"\nC='x#y'\nD=v # note\nE=\n").unwrap();
        assert_eq!(
            v,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x#y".into()),
                ("D".into(), "v".into()),
                ("E".into(), "".into()),
            ]
        );
        assert!(dotenv("oops\n").unwrap_err().contains("line 1"));
    }
}

//! Placement constraints: `KEY==VALUE` and `KEY!=VALUE`, swarm mode's syntax.
//!
//! The keys a constraint can name are the [`Key`]s. Where each comes from matters for
//! security: `node.role` is the role the CA wrote into the node's certificate and
//! `node.labels.*` are labels only managers can set, so constraints on them are
//! trustworthy. Only `engine.labels.*` reads what a node says about itself, which a
//! compromised node can forge; `node.labels.zone==a` is never satisfied by an engine
//! label `zone=a`.
//!
//! Matching follows swarm mode: values compare as whole strings, case-insensitively;
//! label keys compare exactly; a missing attribute or label reads as the empty string,
//! so `==` fails on it and `!=` holds.

use shoal_proto::objects::{Node, NodeRole};
use std::fmt;

/// The keys a constraint may name, as listed in the unknown-key error.
const KEY_HELP: &str = "use node.id, node.hostname, node.role, node.platform.os, \
                        node.platform.arch, node.labels.<key> or engine.labels.<key>";

const NODE_LABEL_PREFIX: &str = "node.labels.";
const ENGINE_LABEL_PREFIX: &str = "engine.labels.";

/// Characters a key or value may not contain: the two operators' characters and those
/// swarm mode reserves for operators it may add (`<`, `>`, `~`).
const RESERVED: [char; 5] = ['=', '!', '<', '>', '~'];

/// A node attribute a constraint or a spread preference can name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// `node.id`
    NodeId,
    /// `node.hostname` (self-reported)
    Hostname,
    /// `node.role`: the certificate role the managers recorded.
    Role,
    /// `node.platform.os` (self-reported)
    Os,
    /// `node.platform.arch` (self-reported)
    Arch,
    /// `node.labels.<key>`: labels set by managers.
    NodeLabel(String),
    /// `engine.labels.<key>`: labels the node reports about itself (untrusted).
    EngineLabel(String),
}

/// Why a key did not parse; wrapped with the whole expression by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("empty key: {KEY_HELP}")]
    Empty,
    #[error("unknown key {0}: {KEY_HELP}")]
    Unknown(String),
    #[error("empty label name after {0}: write {0}<name>")]
    EmptyLabel(&'static str),
    #[error(
        "label name {name:?} contains {ch:?}: label names may not contain whitespace, \
         control characters or any of = ! < > ~"
    )]
    InvalidLabel { name: String, ch: char },
}

impl Key {
    /// Parses a key. The fixed part is case-insensitive, as in swarm mode; the label
    /// name after `node.labels.` / `engine.labels.` is kept exactly.
    pub fn parse(raw: &str) -> Result<Key, KeyError> {
        let key = raw.trim();
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        for (prefix, make) in [
            (NODE_LABEL_PREFIX, Key::NodeLabel as fn(String) -> Key),
            (ENGINE_LABEL_PREFIX, Key::EngineLabel as fn(String) -> Key),
        ] {
            if let Some(name) = strip_prefix_ignore_case(key, prefix) {
                if name.is_empty() {
                    return Err(KeyError::EmptyLabel(prefix));
                }
                if let Some(ch) = name
                    .chars()
                    .find(|c| c.is_whitespace() || c.is_control() || RESERVED.contains(c))
                {
                    return Err(KeyError::InvalidLabel {
                        name: name.to_string(),
                        ch,
                    });
                }
                return Ok(make(name.to_string()));
            }
        }
        let fixed = [
            ("node.id", Key::NodeId),
            ("node.hostname", Key::Hostname),
            ("node.role", Key::Role),
            ("node.platform.os", Key::Os),
            ("node.platform.arch", Key::Arch),
        ];
        fixed
            .into_iter()
            .find(|(name, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, k)| k)
            .ok_or_else(|| KeyError::Unknown(key.to_string()))
    }

    /// The node's value for this key; the empty string when the node lacks it.
    pub fn value_of<'n>(&self, node: &'n Node) -> &'n str {
        let desc = node.description.as_ref();
        match self {
            Key::NodeId => &node.id,
            Key::Hostname => desc.map_or("", |d| d.hostname.as_str()),
            Key::Role => match node.role() {
                NodeRole::Manager => "manager",
                NodeRole::Worker => "worker",
                NodeRole::Unspecified => "",
            },
            Key::Os => desc.map_or("", |d| d.os.as_str()),
            Key::Arch => desc.map_or("", |d| d.arch.as_str()),
            Key::NodeLabel(name) => node.labels.get(name).map_or("", String::as_str),
            Key::EngineLabel(name) => desc
                .and_then(|d| d.engine_labels.get(name))
                .map_or("", String::as_str),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::NodeId => f.write_str("node.id"),
            Key::Hostname => f.write_str("node.hostname"),
            Key::Role => f.write_str("node.role"),
            Key::Os => f.write_str("node.platform.os"),
            Key::Arch => f.write_str("node.platform.arch"),
            Key::NodeLabel(name) => write!(f, "{NODE_LABEL_PREFIX}{name}"),
            Key::EngineLabel(name) => write!(f, "{ENGINE_LABEL_PREFIX}{name}"),
        }
    }
}

/// `==` or `!=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Eq,
    NotEq,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::NotEq => "!=",
        }
    }
}

/// What is wrong with a constraint expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("missing operator: write KEY==VALUE or KEY!=VALUE")]
    MissingOperator,
    #[error("missing operator (a single \"=\" is not one): write KEY==VALUE or KEY!=VALUE")]
    SingleEquals,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("empty value: write KEY==VALUE or KEY!=VALUE")]
    EmptyValue,
    #[error(
        "value {value:?} contains {ch:?}: values may not contain control characters \
         or any of = ! < > ~"
    )]
    InvalidValue { value: String, ch: char },
    #[error("node.role must be manager or worker, not {0:?}")]
    InvalidRole(String),
}

/// A constraint expression that did not parse: names the expression and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("constraint {expr:?}: {problem}")]
pub struct ConstraintError {
    pub expr: String,
    pub problem: Problem,
}

/// One parsed placement constraint. Only [`parse`] makes one, so every `Constraint`
/// names a known key and a well-formed value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Constraint {
    key: Key,
    op: Op,
    value: String,
}

impl Constraint {
    pub fn key(&self) -> &Key {
        &self.key
    }

    pub fn op(&self) -> Op {
        self.op
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether `node` satisfies this constraint.
    pub fn matches(&self, node: &Node) -> bool {
        let equal = eq_fold(self.key.value_of(node), &self.value);
        match self.op {
            Op::Eq => equal,
            Op::NotEq => !equal,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.key, self.op.as_str(), self.value)
    }
}

/// Parses one expression, e.g. `node.labels.zone == eu-1`.
pub fn parse(expr: &str) -> Result<Constraint, ConstraintError> {
    let fail = |problem: Problem| ConstraintError {
        expr: expr.to_string(),
        problem,
    };
    // The first operator in the text splits it: the key may contain neither `=` nor
    // `!`, so an earlier one would be an error anyway.
    let found = [Op::Eq, Op::NotEq]
        .into_iter()
        .filter_map(|op| expr.find(op.as_str()).map(|at| (at, op)))
        .min_by_key(|(at, _)| *at);
    let Some((at, op)) = found else {
        return Err(fail(if expr.contains('=') {
            Problem::SingleEquals
        } else {
            Problem::MissingOperator
        }));
    };
    let key = Key::parse(&expr[..at]).map_err(|e| fail(e.into()))?;
    let value = expr[at + 2..].trim();
    if value.is_empty() {
        return Err(fail(Problem::EmptyValue));
    }
    if let Some(ch) = value
        .chars()
        .find(|c| c.is_control() || RESERVED.contains(c))
    {
        return Err(fail(Problem::InvalidValue {
            value: value.to_string(),
            ch,
        }));
    }
    if key == Key::Role && !(eq_fold(value, "manager") || eq_fold(value, "worker")) {
        return Err(fail(Problem::InvalidRole(value.to_string())));
    }
    Ok(Constraint {
        key,
        op,
        value: value.to_string(),
    })
}

/// Parses every expression; the first bad one is the error.
pub fn parse_all<S: AsRef<str>>(exprs: &[S]) -> Result<Vec<Constraint>, ConstraintError> {
    exprs.iter().map(|e| parse(e.as_ref())).collect()
}

/// Whether `node` satisfies all of `constraints` (they are ANDed).
pub fn all_match(constraints: &[Constraint], node: &Node) -> bool {
    constraints.iter().all(|c| c.matches(node))
}

/// Case-insensitive whole-string comparison, like Go's `strings.EqualFold` that swarm
/// mode uses.
fn eq_fold(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shoal_proto::objects::NodeDescription;

    fn node() -> Node {
        let mut n = Node {
            id: "n1".into(),
            role: NodeRole::Worker as i32,
            description: Some(NodeDescription {
                hostname: "Web-1".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        n.labels.insert("zone".into(), "eu-1".into());
        if let Some(d) = n.description.as_mut() {
            d.engine_labels.insert("disk".into(), "ssd".into());
        }
        n
    }

    fn matches(expr: &str, n: &Node) -> bool {
        parse(expr).expect(expr).matches(n)
    }

    #[test]
    fn parses_keys_operators_and_whitespace() {
        let c = parse("  node.labels.zone ==  eu-1 ").unwrap();
        assert_eq!(c.key(), &Key::NodeLabel("zone".into()));
        assert_eq!(c.op(), Op::Eq);
        assert_eq!(c.value(), "eu-1");
        assert_eq!(c.to_string(), "node.labels.zone==eu-1");
        assert_eq!(
            parse("Node.Role!=Manager").unwrap().to_string(),
            "node.role!=Manager"
        );
        assert_eq!(
            parse("engine.labels.Disk==ssd").unwrap().key(),
            &Key::EngineLabel("Disk".into())
        );
        for key in [
            "node.id",
            "node.hostname",
            "node.platform.os",
            "node.platform.arch",
        ] {
            assert!(parse(&format!("{key}==x")).is_ok(), "{key}");
        }
    }

    #[test]
    fn errors_name_the_expression_and_the_problem() {
        let err = |e: &str| parse(e).unwrap_err().to_string();
        assert_eq!(
            err("node.zone==a"),
            "constraint \"node.zone==a\": unknown key node.zone: use node.id, node.hostname, \
             node.role, node.platform.os, node.platform.arch, node.labels.<key> or \
             engine.labels.<key>"
        );
        assert!(err("node.labels.zone").contains("missing operator"));
        assert!(err("node.labels.zone=a").contains("a single \"=\""));
        assert!(err("==a").contains("empty key"));
        assert!(err("node.id==  ").contains("empty value"));
        assert!(err("node.labels.==a").contains("empty label name after node.labels."));
        assert!(err("node.role==boss").contains("node.role must be manager or worker"));
        assert!(err("node.id==a==b").contains("value \"a==b\" contains '='"));
        assert!(err("node.id<=a").contains("missing operator"));
        assert!(err("node.labels.a b==c").contains("label name \"a b\" contains ' '"));
        assert!(parse_all(&["node.id==a".to_string(), "x".to_string()]).is_err());
    }

    #[test]
    fn values_match_case_insensitively_label_keys_exactly() {
        let n = node();
        assert!(matches("node.hostname==web-1", &n));
        assert!(matches("node.platform.arch==X86_64", &n));
        assert!(matches("node.labels.zone==EU-1", &n));
        assert!(matches("node.role==WORKER", &n));
        assert!(!matches("node.role==manager", &n));
        assert!(!matches("node.labels.Zone==eu-1", &n));
        assert!(matches("node.id==n1", &n));
        assert!(matches("node.id!=n2", &n));
    }

    #[test]
    fn missing_label_fails_eq_and_holds_not_eq() {
        let n = node();
        assert!(!matches("node.labels.rack==r1", &n));
        assert!(matches("node.labels.rack!=r1", &n));
        let bare = Node::default();
        assert!(!matches("node.hostname==web-1", &bare));
        assert!(!matches("node.role==worker", &bare));
        assert!(matches("node.role!=manager", &bare));
    }

    #[test]
    fn engine_labels_do_not_satisfy_node_labels() {
        let n = node();
        assert!(matches("engine.labels.disk==ssd", &n));
        assert!(!matches("node.labels.disk==ssd", &n));
        assert!(!matches("engine.labels.zone==eu-1", &n));
    }

    fn valid_expr() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("node.id".to_string()),
            Just("NODE.hostname".to_string()),
            Just("node.platform.os".to_string()),
            Just("node.platform.arch".to_string()),
            "[a-zA-Z0-9._/-]{1,8}".prop_map(|k| format!("node.labels.{k}")),
            "[a-zA-Z0-9._/-]{1,8}".prop_map(|k| format!("engine.labels.{k}")),
        ];
        (
            key,
            prop_oneof![Just("=="), Just("!=")],
            "[ a-zA-Z0-9:._*/-]{0,10}[a-z0-9]",
        )
            .prop_map(|(k, op, v)| format!(" {k} {op} {v} "))
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(expr in ".{0,40}") {
            if let Ok(c) = parse(&expr) {
                prop_assert_eq!(parse(&c.to_string()), Ok(c));
            }
        }

        #[test]
        fn operator_soup_never_panics(expr in "[a-z.=!<> ]{0,30}") {
            if let Ok(c) = parse(&expr) {
                prop_assert_eq!(parse(&c.to_string()), Ok(c));
            }
        }

        #[test]
        fn valid_constraints_round_trip(expr in valid_expr()) {
            let c = parse(&expr);
            prop_assert!(c.is_ok(), "{:?}: {:?}", expr, c);
            let c = c.unwrap();
            prop_assert_eq!(parse(&c.to_string()), Ok(c));
        }
    }
}

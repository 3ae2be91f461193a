//! Several `-c` files, merged by swarm's rules: services by name (scalars replaced,
//! lists appended, mappings merged by key; ports by published port, secrets and configs
//! by source, volumes by target; `command` and `entrypoint` replaced; a network's
//! aliases replaced); top-level networks, volumes, secrets and configs by name, the
//! later file's definition replacing the earlier one.

use crate::yaml::{Entry, Node, V};

/// Merges `over` (a later file) into `base`.
pub fn files(base: &mut Node, over: Node) {
    let V::Map(entries) = over.v else { return };
    for e in entries {
        match e.key.as_str() {
            "services" => {
                let Some(dst) = slot(base, &e.key, e.line, e.value.file) else {
                    continue;
                };
                for svc in into_entries(e.value) {
                    match dst.get_mut(&svc.key) {
                        Some(cur) if cur.map().is_some() && svc.value.map().is_some() => {
                            service(cur, svc.value)
                        }
                        Some(cur) => *cur = svc.value,
                        None => push(dst, svc),
                    }
                }
            }
            "networks" | "volumes" | "secrets" | "configs" => {
                let Some(dst) = slot(base, &e.key, e.line, e.value.file) else {
                    continue;
                };
                for def in into_entries(e.value) {
                    match dst.get_mut(&def.key) {
                        Some(cur) => *cur = def.value,
                        None => push(dst, def),
                    }
                }
            }
            _ => set(base, e),
        }
    }
}

/// The mapping under `key` in `base`, made if absent.
fn slot<'a>(base: &'a mut Node, key: &str, line: usize, file: usize) -> Option<&'a mut Node> {
    if base.get(key).is_none_or(|n| n.map().is_none()) {
        let mut n = Node::new(line, V::Map(vec![]));
        n.file = file;
        set(
            base,
            Entry {
                key: key.to_string(),
                line,
                value: n,
            },
        );
    }
    base.get_mut(key)
}

fn into_entries(n: Node) -> Vec<Entry> {
    match n.v {
        V::Map(m) => m,
        _ => Vec::new(),
    }
}

fn push(n: &mut Node, e: Entry) {
    if let Some(m) = n.map_mut() {
        m.push(e);
    }
}

fn set(n: &mut Node, e: Entry) {
    if let Some(m) = n.map_mut() {
        match m.iter_mut().find(|x| x.key == e.key) {
            Some(x) => *x = e,
            None => m.push(e),
        }
    }
}

fn service(base: &mut Node, over: Node) {
    for e in into_entries(over) {
        let Some(cur) = base.get_mut(&e.key) else {
            push(base, e);
            continue;
        };
        match e.key.as_str() {
            "command" | "entrypoint" => *cur = e.value,
            "ports" => by_key(cur, e.value, port_key),
            "secrets" | "configs" => by_key(cur, e.value, source_key),
            "volumes" => by_key(cur, e.value, target_key),
            "networks" => networks(cur, e.value),
            _ => generic(cur, e.value, &e.key),
        }
    }
}

/// Maps merged by key, lists appended (a value already there is not repeated), other
/// values replaced. `environment`, `labels` and the like may be given as `K=V` lists:
/// they merge by variable name.
fn generic(cur: &mut Node, over: Node, key: &str) {
    let keyed = matches!(key, "environment" | "labels" | "sysctls" | "depends_on");
    if keyed && (cur.seq().is_some() || over.seq().is_some()) {
        let mut over = over;
        to_map(cur);
        to_map(&mut over);
        generic(cur, over, "");
        return;
    }
    match (&mut cur.v, over.v) {
        (V::Map(_), V::Map(entries)) => {
            for e in entries {
                match cur.get_mut(&e.key) {
                    Some(c) => generic(c, e.value, &e.key),
                    None => push(cur, e),
                }
            }
        }
        (V::Seq(items), V::Seq(more)) => {
            for m in more {
                if !items.iter().any(|i| same(i, &m)) {
                    items.push(m);
                }
            }
        }
        (_, v) => {
            cur.v = v;
            cur.line = over.line;
            cur.file = over.file;
        }
    }
}

fn same(a: &Node, b: &Node) -> bool {
    match (a.scalar(), b.scalar()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// `[A=1, B]` → `{A: "1", B: null}`.
fn to_map(n: &mut Node) {
    let V::Seq(items) = &n.v else { return };
    let entries = items
        .iter()
        .filter_map(|i| {
            let s = i.scalar()?;
            let (k, v) = match s.split_once('=') {
                Some((k, v)) => (k.to_string(), Node::new(i.line, V::Str(v.to_string()))),
                // A dependency list (`depends_on: [db]`) becomes `{db: {}}`.
                None => (s.clone(), Node::new(i.line, V::Null)),
            };
            Some(Entry {
                key: k,
                line: i.line,
                value: v,
            })
        })
        .collect();
    n.v = V::Map(entries);
}

fn by_key(cur: &mut Node, over: Node, key: fn(&Node) -> Option<String>) {
    let (V::Seq(items), V::Seq(more)) = (&mut cur.v, over.v) else {
        return;
    };
    for m in more {
        let k = key(&m);
        match items.iter_mut().find(|i| k.is_some() && key(i) == k) {
            Some(slot) => *slot = m,
            None => items.push(m),
        }
    }
}

fn networks(cur: &mut Node, over: Node) {
    let mut over = over;
    if cur.seq().is_some() && over.seq().is_some() {
        return generic(cur, over, "");
    }
    to_map(cur);
    to_map(&mut over);
    for e in into_entries(over) {
        set(cur, e);
    }
}

/// A port's published port: `8080` of `"8080:80"`, `"127.0.0.1:8080:80/tcp"` or
/// `{published: 8080}`; none for a port that publishes nothing.
pub fn port_key(n: &Node) -> Option<String> {
    if let Some(p) = n.get("published") {
        return p.scalar();
    }
    let s = n.scalar()?;
    let s = s.split('/').next().unwrap_or("");
    let parts: Vec<&str> = s.split(':').collect();
    (parts.len() >= 2).then(|| parts[parts.len() - 2].to_string())
}

fn source_key(n: &Node) -> Option<String> {
    match n.get("source") {
        Some(s) => s.scalar(),
        None => n.scalar(),
    }
}

fn target_key(n: &Node) -> Option<String> {
    if let Some(t) = n.get("target") {
        return t.scalar();
    }
    let s = n.scalar()?;
    let parts: Vec<&str> = s.split(':').collect();
    Some(if parts.len() >= 2 { parts[1] } else { parts[0] }.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{emit, parse};

    fn merged(a: &str, b: &str) -> String {
        let mut base = parse(a).unwrap();
        files(&mut base, parse(b).unwrap());
        emit(&base)
    }

    #[test]
    fn swarms_merge_rules() {
        let a = "services:
  web:
    image: nginx:1
    command: [a, b]
    environment:
      A: '1'
      B: '2'
    labels: [x=1]
    ports:
      - 8080:80
      - target: 443
        published: 8443
    secrets: [s1, {source: s2, target: t}]
    volumes: [/data:/d, /logs:/l:ro]
    networks: {front: {aliases: [a1]}, back: null}
    dns: [1.1.1.1]
    deploy:
      replicas: 2
      labels: {k: v}
  db:
    image: redis
networks:
  front: {driver: overlay}
";
        let b = "services:
  web:
    image: nginx:2
    command: c
    environment: [B=3, C=4]
    labels: {y: '2'}
    ports: ['8080:81', '9000:9000']
    secrets: [{source: s2, target: u}]
    volumes: ['/other:/d']
    networks: {front: {aliases: [a2]}}
    dns: [1.1.1.1, 8.8.8.8]
    deploy:
      replicas: 3
  cache:
    image: memcached
networks:
  front: {driver: overlay, internal: true}
";
        let out = merged(a, b);
        let n = parse(&out).unwrap();
        let web = n.get("services").unwrap().get("web").unwrap();
        let s = |n: Option<&Node>| n.and_then(Node::scalar).unwrap_or_default();
        assert_eq!(s(web.get("image")), "nginx:2");
        assert_eq!(s(web.get("command")), "c");
        let env = web.get("environment").unwrap();
        assert_eq!(
            (s(env.get("A")), s(env.get("B")), s(env.get("C"))),
            ("1".into(), "3".into(), "4".into())
        );
        let labels = web.get("labels").unwrap();
        assert_eq!(
            (s(labels.get("x")), s(labels.get("y"))),
            ("1".into(), "2".into())
        );
        let ports: Vec<String> = web
            .get("ports")
            .unwrap()
            .seq()
            .unwrap()
            .iter()
            .map(|p| {
                p.scalar()
                    .unwrap_or_else(|| format!("long {}", port_key(p).unwrap()))
            })
            .collect();
        assert_eq!(ports, ["8080:81", "long 8443", "9000:9000"]);
        let secrets = web.get("secrets").unwrap().seq().unwrap();
        assert_eq!(secrets.len(), 2);
        assert_eq!(s(secrets[1].get("target")), "u");
        let vols: Vec<String> = web
            .get("volumes")
            .unwrap()
            .seq()
            .unwrap()
            .iter()
            .filter_map(Node::scalar)
            .collect();
        assert_eq!(vols, ["/other:/d", "/logs:/l:ro"]);
        let nets = web.get("networks").unwrap();
        let front: Vec<String> = nets
            .get("front")
            .and_then(|f| f.get("aliases"))
            .and_then(Node::seq)
            .unwrap()
            .iter()
            .filter_map(Node::scalar)
            .collect();
        assert_eq!(front, ["a2"]);
        assert!(nets.get("back").is_some());
        let dns: Vec<String> = web
            .get("dns")
            .unwrap()
            .seq()
            .unwrap()
            .iter()
            .filter_map(Node::scalar)
            .collect();
        assert_eq!(dns, ["1.1.1.1", "8.8.8.8"]);
        let deploy = web.get("deploy").unwrap();
        assert_eq!(s(deploy.get("replicas")), "3");
        assert_eq!(s(deploy.get("labels").and_then(|l| l.get("k"))), "v");
        assert!(n.get("services").unwrap().get("db").is_some());
        assert!(n.get("services").unwrap().get("cache").is_some());
        assert_eq!(
            s(n.get("networks")
                .unwrap()
                .get("front")
                .unwrap()
                .get("internal")),
            "true"
        );
    }
}

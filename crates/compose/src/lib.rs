//! The compose file format that `docker stack deploy` reads (schema 3.0–3.13), for
//! `shoal stack`: files are read into a tree that keeps each value's line, checked key
//! by key as swarm's CLI checks them (refused keys, then unknown keys, named with their
//! line), interpolated (`$VAR` and friends, from the environment and a `.env` file
//! beside the first file), merged by swarm's rules, and turned into shoal's specs
//! ([`convert`]). Pure: reads the files it is given, talks to nothing.

pub mod convert;
pub mod interpolate;
pub mod merge;
pub mod schema;
pub mod yaml;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use yaml::{Node, V};

/// One `-c` file: its name as given (`-` for stdin) and its text.
pub struct Source {
    pub name: String,
    pub text: String,
}

/// The merged, interpolated file, and what a deploy should warn about.
pub struct Loaded {
    pub tree: Node,
    /// The `-c` names, for messages (`Node::file` indexes them).
    pub files: Vec<String>,
    /// The directory relative paths (`env_file`, `file:`, bind sources) start from:
    /// the first file's.
    pub dir: PathBuf,
    pub warnings: Vec<String>,
}

/// A file that cannot be deployed, in words that say where and why.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn at(files: &[String], file: usize, line: usize) -> String {
    let name = files.get(file).map(String::as_str).unwrap_or("?");
    if line == 0 {
        name.to_string()
    } else {
        format!("{name}, line {line}")
    }
}

/// Reads the `-c` files (in order) with the environment `env`; `dotenv` is the text of
/// the `.env` file beside the first file, if there is one (the environment wins over it).
pub fn load(
    sources: &[Source],
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    dotenv: Option<&str>,
    interpolate_values: bool,
) -> Result<Loaded, Error> {
    if sources.is_empty() {
        return Err(Error("no compose file given: use -c FILE".into()));
    }
    let files: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
    let dotenv = match dotenv {
        Some(t) => interpolate::dotenv(t).map_err(|e| Error(format!(".env: {e}")))?,
        None => Vec::new(),
    };
    let lookup = |name: &str| {
        env(name).or_else(|| {
            dotenv
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    };
    let mut trees = Vec::new();
    let mut version: Option<(String, String)> = None;
    let mut warnings = Vec::new();
    let mut ignored = BTreeSet::new();
    let mut deprecated = BTreeSet::new();
    for (i, src) in sources.iter().enumerate() {
        let mut tree = yaml::parse(&src.text)
            .map_err(|e| Error(format!("{}: {}", at(&files, i, e.line), e.msg)))?;
        tree.set_file(i);
        if tree.map().is_none() {
            return Err(Error(format!(
                "{}: a compose file is a mapping (services:, networks:, ...), not {}",
                src.name,
                tree.kind()
            )));
        }
        let v = file_version(&tree).map_err(|e| Error(format!("{}: {e}", src.name)))?;
        // Files that state different versions do not merge (as in swarm); a file that
        // states none (an override, typically) merges with any.
        if tree.get("version").is_some() {
            match &version {
                Some((first, _)) if *first != v => {
                    return Err(Error(format!(
                        "version mismatched between two composefiles : {first} and {v}"
                    )))
                }
                _ => version = Some((v, src.name.clone())),
            }
        }
        refused(&tree).map_err(Error)?;
        let mut bad = Vec::new();
        schema::check(&tree, &schema::FILE, "", &mut bad);
        if !bad.is_empty() {
            let lines: Vec<String> = bad
                .iter()
                .map(|(line, msg)| format!("{msg} ({})", at(&files, i, *line)))
                .collect();
            return Err(Error(lines.join("\n")));
        }
        for svc in tree.get("services").and_then(Node::map).unwrap_or_default() {
            for e in svc.value.map().unwrap_or_default() {
                if schema::IGNORED.contains(&e.key.as_str()) {
                    ignored.insert(e.key.clone());
                }
                if let Some((k, why)) = schema::DEPRECATED.iter().find(|(k, _)| *k == e.key) {
                    deprecated.insert(format!("{k}: {why}"));
                }
            }
        }
        if interpolate_values {
            for e in tree.map_mut().into_iter().flatten() {
                if e.key.starts_with("x-") || e.key == "version" {
                    continue;
                }
                interpolate::tree(&mut e.value, &lookup)
                    .map_err(|(line, msg)| Error(format!("{}: {msg}", at(&files, i, line))))?;
            }
        }
        trees.push(tree);
    }
    if !ignored.is_empty() {
        warnings.push(format!(
            "Ignoring unsupported options: {}\n",
            ignored.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if !deprecated.is_empty() {
        warnings.push(format!(
            "Ignoring deprecated options:\n\n{}\n",
            deprecated.into_iter().collect::<Vec<_>>().join("\n\n")
        ));
    }
    let mut trees = trees.into_iter();
    let mut tree = trees.next().unwrap_or_else(|| Node::new(0, V::Map(vec![])));
    for next in trees {
        merge::files(&mut tree, next);
    }
    Ok(Loaded {
        tree,
        files,
        dir: dir.to_path_buf(),
        warnings,
    })
}

/// `version:` missing, empty or "3" reads as 3.13; else 3.0 to 3.13.
fn file_version(tree: &Node) -> Result<String, String> {
    let Some(v) = tree.get("version") else {
        return Ok("3.13".into());
    };
    let s = v.scalar().unwrap_or_default();
    let s = match s.as_str() {
        "" | "3" => "3.13".to_string(),
        s => s.to_string(),
    };
    let minor = s
        .strip_prefix("3.")
        .and_then(|m| m.parse::<u32>().ok())
        .filter(|m| *m <= 13);
    match minor {
        Some(_) => Ok(s),
        None => Err(format!("unsupported Compose file version: {s}")),
    }
}

/// Swarm's refused keys, all at once, in its words.
fn refused(tree: &Node) -> Result<(), String> {
    let mut found = BTreeSet::new();
    for svc in tree.get("services").and_then(Node::map).unwrap_or_default() {
        for e in svc.value.map().unwrap_or_default() {
            if let Some((k, why)) = schema::REFUSED.iter().find(|(k, _)| *k == e.key) {
                found.insert(format!("{k}: {why}"));
            }
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(format!(
        "compose file contains unsupported options:\n\n{}",
        found.into_iter().collect::<Vec<_>>().join("\n\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load1(text: &str, env: &[(&str, &str)]) -> Result<Loaded, Error> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        load(
            &[Source {
                name: "stack.yml".into(),
                text: text.into(),
            }],
            Path::new("/tmp"),
            &lookup,
            None,
            true,
        )
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let e = load1(
            "services:\n  web:\n    image: nginx\n    profiles: [a]\n",
            &[],
        )
        .err()
        .unwrap()
        .0;
        assert_eq!(
            e,
            "services.web Additional property profiles is not allowed (stack.yml, line 4)"
        );
        let e = load1(
            "services:\n  web:\n    image: nginx\n    deploy:\n      replica: 2\n",
            &[],
        )
        .err()
        .unwrap()
        .0;
        assert_eq!(
            e,
            "services.web.deploy Additional property replica is not allowed (stack.yml, line 5)"
        );
        let e = load1("servics: {}\n", &[]).err().unwrap().0;
        assert!(e.starts_with("(root) Additional property servics"), "{e}");
        // x- keys pass anywhere a mapping has fixed keys.
        load1(
            "x-a: 1\nservices:\n  web:\n    image: nginx\n    x-b: 2\n",
            &[],
        )
        .unwrap();
    }

    #[test]
    fn refused_ignored_and_deprecated_keys_in_swarms_words() {
        let e = load1(
            "services:\n  web:\n    image: nginx\n    mem_limit: 1g\n    extends: x\n",
            &[],
        )
        .err()
        .unwrap()
        .0;
        assert_eq!(
            e,
            "compose file contains unsupported options:\n\nextends: Support for `extends` is not implemented yet.\n\nmem_limit: Set resource limits using deploy.resources"
        );
        for (k, _) in schema::REFUSED {
            let e = load1(&format!("services:\n  a:\n    image: x\n    {k}: 1\n"), &[])
                .err()
                .unwrap()
                .0;
            assert!(e.contains(&format!("\n\n{k}: ")), "{e}");
        }
        let mut text = String::from("services:\n  web:\n    image: nginx\n");
        for k in schema::IGNORED {
            text.push_str(&format!("    {k}: x\n"));
        }
        text.push_str("    container_name: a\n    expose: [80]\n");
        let l = load1(&text, &[]).unwrap();
        assert_eq!(
            l.warnings[0],
            format!(
                "Ignoring unsupported options: {}\n",
                schema::IGNORED.join(", ")
            )
        );
        assert_eq!(
            l.warnings[1],
            "Ignoring deprecated options:\n\ncontainer_name: Setting the container name is not supported.\n\nexpose: Exposing ports is unnecessary - services on the same network can access each other's containers on any port.\n"
        );
    }

    #[test]
    fn files_of_different_versions_do_not_merge_but_one_without_a_version_does() {
        let src = |name: &str, text: &str| Source {
            name: name.into(),
            text: text.into(),
        };
        let both = |a: &str, b: &str| {
            load(
                &[src("a.yml", a), src("b.yml", b)],
                Path::new("/tmp"),
                &|_| None,
                None,
                true,
            )
        };
        let e = both("version: '3.8'\n", "version: '3.9'\n")
            .err()
            .unwrap()
            .0;
        assert_eq!(
            e,
            "version mismatched between two composefiles : 3.8 and 3.9"
        );
        both("version: '3.8'\n", "services: {}\n").unwrap();
    }

    #[test]
    fn versions() {
        for ok in [
            "",
            "version: '3'\n",
            "version: \"3.0\"\n",
            "version: 3.8\n",
            "version: '3.13'\n",
        ] {
            load1(&format!("{ok}services: {{}}\n"), &[]).unwrap();
        }
        let e = load1("version: '2.4'\nservices: {}\n", &[])
            .err()
            .unwrap()
            .0;
        assert_eq!(e, "stack.yml: unsupported Compose file version: 2.4");
    }

    #[test]
    fn a_missing_required_variable_names_it_and_its_line() {
        let e = load1(
            "services:\n  web:\n    image: nginx:${TAG:?set TAG to the release}\n",
            &[],
        )
        .err()
        .unwrap()
        .0;
        assert_eq!(
            e,
            "stack.yml, line 3: required variable TAG is missing a value: set TAG to the release"
        );
        let l = load1(
            "services:\n  web:\n    image: nginx:${TAG:?x}\n",
            &[("TAG", "1.25")],
        )
        .unwrap();
        assert_eq!(
            l.tree
                .get("services")
                .and_then(|s| s.get("web"))
                .and_then(|w| w.get("image"))
                .and_then(Node::scalar)
                .as_deref(),
            Some("nginx:1.25")
        );
    }

    #[test]
    fn the_environment_wins_over_dotenv() {
        let env = |n: &str| (n == "A").then(|| "from-env".to_string());
        let l = load(
            &[Source {
                name: "s.yml".into(),
                text: "services:\n  w:\n    image: \"$A-$B\"\n".into(),
            }],
            Path::new("/tmp"),
            &env,
            Some("A=from-file\nB=b-from-file\n"),
            true,
        )
        .unwrap();
        let img = l
            .tree
            .get("services")
            .unwrap()
            .get("w")
            .unwrap()
            .get("image");
        assert_eq!(
            img.and_then(Node::scalar).as_deref(),
            Some("from-env-b-from-file")
        );
    }
}

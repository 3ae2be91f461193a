//! Named volumes: node-local directories that outlive the tasks using them, as in
//! swarm mode. Under `<state>/volumes/`:
//!
//! ```text
//! NAME/_data           the data, bind-mounted into the containers that use it
//! NAME/meta.json       when it was made, its labels, whether it is anonymous
//! NAME/users/TASK_ID   one file per task whose container uses it (content: the task's name)
//! .tasks/TASK_ID       the volumes a task uses, one per line (so release is one read)
//! ```
//!
//! A volume is created on first use on the node that runs the task (or by `volume
//! create`); a task replaced on the same node mounts the same data. An anonymous volume
//! (a mount with no source) is named after its task and goes when the task's container
//! does. A volume in use cannot be removed: the error names the task.

use shoal_proto::objects::VolumeSummary;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    Invalid(String),
    #[error("no such volume: {0}")]
    NotFound(String),
    #[error("{0}")]
    InUse(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let context = context.into();
    move |source| VolumeError::Io { context, source }
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Meta {
    created_at_unix: i64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    anonymous: bool,
}

/// A volume as `volume ls/inspect` shows it.
#[derive(Clone, Debug)]
pub struct VolumeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created_at_unix: i64,
    pub anonymous: bool,
    pub mountpoint: PathBuf,
    /// "NAME (ID)" of each task whose container uses it.
    pub used_by: Vec<String>,
}

/// The node's volumes. Calls block (disk): async callers use `spawn_blocking`.
pub struct Volumes {
    dir: PathBuf,
    /// Serializes changes (create, use, release, remove), so a volume is never removed
    /// while a task takes it.
    lock: std::sync::Mutex<()>,
    /// What the heartbeat reports, kept until a volume is made or removed.
    summaries: std::sync::Mutex<Option<Vec<VolumeSummary>>>,
}

/// The anonymous volume of mount `index` of task `task_id`.
pub fn anonymous_name(task_id: &str, index: usize) -> String {
    format!("{task_id}-{index}")
}

impl Volumes {
    pub fn new(state_dir: &Path) -> Volumes {
        Volumes {
            dir: state_dir.join("volumes"),
            lock: std::sync::Mutex::new(()),
            summaries: std::sync::Mutex::new(None),
        }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        *self.summaries.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn path(&self, name: &str) -> Result<PathBuf, VolumeError> {
        shoal_proto::options::check_volume_name(name).map_err(VolumeError::Invalid)?;
        Ok(self.dir.join(name))
    }

    fn meta(dir: &Path) -> Option<Meta> {
        let text = std::fs::read(dir.join("meta.json")).ok()?;
        // A garbled meta file still leaves a volume (its data is what matters).
        Some(serde_json::from_slice(&text).unwrap_or_default())
    }

    /// Creates volume `name` unless it exists; true if it was made now.
    fn ensure(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<bool, VolumeError> {
        let dir = self.path(name)?;
        if dir.join("meta.json").exists() {
            return Ok(false);
        }
        std::fs::create_dir_all(dir.join("_data"))
            .map_err(io(format!("cannot create volume {name}")))?;
        std::fs::create_dir_all(dir.join("users"))
            .map_err(io(format!("cannot create volume {name}")))?;
        let meta = Meta {
            created_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            labels: labels.clone(),
            anonymous,
        };
        let tmp = dir.join("meta.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&meta).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, dir.join("meta.json")))
            .map_err(io(format!("cannot record volume {name}")))?;
        self.changed();
        Ok(true)
    }

    /// `volume create`: makes volume `name` (a random one when empty), or returns the
    /// one that exists.
    pub fn create(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<VolumeInfo, VolumeError> {
        let name = match name {
            "" => shoal_pki::random_id(),
            n => n.to_string(),
        };
        let _g = self.guard();
        self.ensure(&name, labels, false)?;
        self.info(&name)
    }

    fn info(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        let dir = self.path(name)?;
        let meta = Self::meta(&dir).ok_or_else(|| VolumeError::NotFound(name.to_string()))?;
        let mut used_by: Vec<String> = std::fs::read_dir(dir.join("users"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                let id = e.file_name().to_string_lossy().into_owned();
                match std::fs::read_to_string(e.path()) {
                    Ok(n) if !n.trim().is_empty() => format!("{} ({id})", n.trim()),
                    _ => id,
                }
            })
            .collect();
        used_by.sort();
        Ok(VolumeInfo {
            name: name.to_string(),
            labels: meta.labels,
            created_at_unix: meta.created_at_unix,
            anonymous: meta.anonymous,
            mountpoint: dir.join("_data"),
            used_by,
        })
    }

    pub fn inspect(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        let _g = self.guard();
        self.info(name)
    }

    pub fn list(&self) -> Vec<VolumeInfo> {
        let _g = self.guard();
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| shoal_proto::options::check_volume_name(n).is_ok())
            .collect();
        names.sort();
        names.iter().filter_map(|n| self.info(n).ok()).collect()
    }

    /// What the node reports to the managers.
    pub fn summaries(&self) -> Vec<VolumeSummary> {
        if let Some(s) = &*self.summaries.lock().unwrap_or_else(|p| p.into_inner()) {
            return s.clone();
        }
        let list: Vec<VolumeSummary> = self
            .list()
            .into_iter()
            .take(shoal_proto::limits::MAX_VOLUMES)
            .map(|v| VolumeSummary {
                name: v.name,
                labels: v.labels.into_iter().collect(),
                created_at_unix: v.created_at_unix,
                anonymous: v.anonymous,
            })
            .collect();
        *self.summaries.lock().unwrap_or_else(|p| p.into_inner()) = Some(list.clone());
        list
    }

    /// Removes volume `name` and its data, unless a task uses it.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        let _g = self.guard();
        let v = self.info(name)?;
        if !v.used_by.is_empty() {
            return Err(VolumeError::InUse(format!(
                "volume {name} is in use by task {}: remove the task (or its service) first",
                v.used_by.join(", task ")
            )));
        }
        self.delete(name)
    }

    fn delete(&self, name: &str) -> Result<(), VolumeError> {
        let dir = self.path(name)?;
        // The meta file first: a half-removed volume is gone, not a damaged one.
        let _ = std::fs::remove_file(dir.join("meta.json"));
        std::fs::remove_dir_all(&dir).map_err(io(format!("cannot remove volume {name}")))?;
        self.changed();
        Ok(())
    }

    /// Removes the unused volumes (only anonymous ones unless `all`); returns their names
    /// and the bytes freed.
    pub fn prune(&self, all: bool) -> (Vec<String>, u64) {
        let unused: Vec<VolumeInfo> = self
            .list()
            .into_iter()
            .filter(|v| v.used_by.is_empty() && (all || v.anonymous))
            .collect();
        let _g = self.guard();
        let mut removed = Vec::new();
        let mut bytes = 0;
        for v in unused {
            // Taken since it was listed: it stays.
            if !self.info(&v.name).is_ok_and(|i| i.used_by.is_empty()) {
                continue;
            }
            let size = dir_size(&v.mountpoint);
            if self.delete(&v.name).is_ok() {
                bytes += size;
                removed.push(v.name);
            }
        }
        (removed, bytes)
    }

    /// Task `task_id` (named `task_name`) mounts volume `name` (created now if it does
    /// not exist, with `labels`; `anonymous` for a mount without a source). Returns its
    /// data directory, and whether it is new.
    pub fn take(
        &self,
        task_id: &str,
        task_name: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<(PathBuf, bool), VolumeError> {
        let _g = self.guard();
        let fresh = self.ensure(name, labels, anonymous)?;
        let dir = self.path(name)?;
        std::fs::create_dir_all(dir.join("users")).map_err(io("cannot note the volume's user"))?;
        std::fs::write(dir.join("users").join(task_id), task_name)
            .map_err(io("cannot note the volume's user"))?;
        let tasks = self.dir.join(".tasks");
        std::fs::create_dir_all(&tasks).map_err(io("cannot note the task's volumes"))?;
        let index = tasks.join(task_id);
        let mut list = std::fs::read_to_string(&index).unwrap_or_default();
        if !list.lines().any(|l| l == name) {
            list.push_str(name);
            list.push('\n');
            std::fs::write(&index, list).map_err(io("cannot note the task's volumes"))?;
        }
        Ok((dir.join("_data"), fresh))
    }

    /// Task `task_id`'s container is gone: it no longer uses its volumes, and its
    /// anonymous ones go with it.
    pub fn release(&self, task_id: &str) {
        let _g = self.guard();
        let index = self.dir.join(".tasks").join(task_id);
        let Ok(list) = std::fs::read_to_string(&index) else {
            return;
        };
        for name in list.lines() {
            let Ok(dir) = self.path(name) else { continue };
            let _ = std::fs::remove_file(dir.join("users").join(task_id));
            let anonymous = Self::meta(&dir).is_some_and(|m| m.anonymous);
            let unused = std::fs::read_dir(dir.join("users"))
                .map(|mut d| d.next().is_none())
                .unwrap_or(true);
            if anonymous && unused {
                if let Err(e) = self.delete(name) {
                    tracing::warn!(volume = name, error = %e, "cannot remove an anonymous volume");
                }
            }
        }
        let _ = std::fs::remove_file(index);
    }
}

/// Bytes under `dir` (files only, symlinks not followed).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([("team".to_string(), "db".to_string())])
    }

    #[test]
    fn a_volume_is_kept_across_tasks_and_cannot_go_while_used() {
        let dir = tempfile::tempdir().unwrap();
        let v = Volumes::new(dir.path());
        let (data, fresh) = v.take("t1", "db.1.t1", "data", &labels(), false).unwrap();
        assert!(fresh);
        std::fs::write(data.join("count"), "41").unwrap();
        let e = v.remove("data").unwrap_err().to_string();
        assert!(e.contains("in use by task db.1.t1 (t1)"), "{e}");
        v.release("t1");
        let (again, fresh) = v
            .take("t2", "db.1.t2", "data", &BTreeMap::new(), false)
            .unwrap();
        assert!(!fresh);
        assert_eq!(std::fs::read_to_string(again.join("count")).unwrap(), "41");
        assert_eq!(v.inspect("data").unwrap().labels, labels());
        assert_eq!(v.summaries().len(), 1);
        v.release("t2");
        v.remove("data").unwrap();
        assert!(v.list().is_empty() && v.summaries().is_empty());
        assert!(matches!(v.inspect("data"), Err(VolumeError::NotFound(_))));
    }

    #[test]
    fn an_anonymous_volume_goes_with_its_task_and_prune_takes_only_unused_ones() {
        let dir = tempfile::tempdir().unwrap();
        let v = Volumes::new(dir.path());
        let anon = anonymous_name("t1", 0);
        v.take("t1", "x", &anon, &BTreeMap::new(), true).unwrap();
        v.create("kept", &BTreeMap::new()).unwrap();
        v.take("t2", "y", "used", &BTreeMap::new(), false).unwrap();
        v.release("t1");
        assert!(
            v.inspect(&anon).is_err(),
            "the anonymous volume went with its task"
        );
        let (removed, _) = v.prune(false);
        assert!(removed.is_empty(), "{removed:?}");
        let (removed, _) = v.prune(true);
        assert_eq!(removed, ["kept"]);
        assert_eq!(v.list().len(), 1);
    }

    #[test]
    fn names_that_could_make_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = Volumes::new(dir.path());
        for bad in ["../x", ".tasks", "a/b", ""] {
            let e = v.take("t", "t", bad, &BTreeMap::new(), false).unwrap_err();
            assert!(matches!(e, VolumeError::Invalid(_)), "{bad:?}: {e}");
        }
    }
}

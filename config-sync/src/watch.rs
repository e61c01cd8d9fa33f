//! File source: a folder of YAML/JSON manifests, read recursively, re-read on change.
//!
//! First stage of config-sync (`watch → model → compile → publish`). Each file keeps the
//! objects of its last good read, so a broken edit never blanks what was valid:
//!
//! - a file that no longer parses (YAML syntax, read error) keeps its last good objects;
//! - an object that no longer passes admission keeps its last valid version, like an API
//!   server rejecting the update;
//! - a file that is deleted takes its objects with it.
//!
//! Every problem is reported with the file, the document, the object and the field.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::Value;
use tracing::{info, warn};

use crate::model::{Model, Object, ObjectId, parse_document};

/// A manifests folder and what was last read from it.
#[derive(Debug)]
pub struct FileSource {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    generations: HashMap<ObjectId, (String, i64)>,
}

#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    objects: Vec<Object>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// Outcome of a scan.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Files read this time.
    pub read: usize,
    /// Some file was added, changed or removed.
    pub changed: bool,
    /// Problems found (each also logged).
    pub problems: Vec<String>,
}

impl FileSource {
    /// A source over `root` (nothing read yet).
    pub fn new(root: &Path) -> FileSource {
        FileSource { root: root.to_owned(), files: BTreeMap::new(), generations: HashMap::new() }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Re-reads every file whose size, mtime or inode changed, plus those in `force`.
    pub fn scan(&mut self, force: &BTreeSet<PathBuf>) -> io::Result<ScanReport> {
        let mut report = ScanReport::default();
        let mut found = Vec::new();
        walk(&self.root, &mut found)?;
        let present: BTreeSet<&PathBuf> = found.iter().map(|(p, _)| p).collect();
        let gone: Vec<PathBuf> =
            self.files.keys().filter(|p| !present.contains(p)).cloned().collect();
        for path in gone {
            info!(file = %path.display(), "manifest removed");
            self.files.remove(&path);
            report.changed = true;
        }
        for (path, stamp) in found {
            let unchanged = self.files.get(&path).is_some_and(|s| s.stamp == stamp);
            if unchanged && !force.contains(&path) {
                continue;
            }
            report.read += 1;
            let previous = self.files.remove(&path);
            let state = read_file(&path, stamp, previous, &mut report.problems);
            if let Some(state) = state {
                self.files.insert(path, state);
            }
            report.changed = true;
        }
        Ok(report)
    }

    /// All objects, merged over files (the first file in path order wins a duplicate), with
    /// `metadata.generation` filled in where the manifest left it out: it starts at 1 and goes
    /// up each time the object's spec changes, as on an API server.
    pub fn model(&mut self) -> (Model, Vec<String>) {
        let mut model = Model::default();
        let mut problems = Vec::new();
        let mut origin: HashMap<ObjectId, &Path> = HashMap::new();
        let mut seen = BTreeSet::new();
        for (path, state) in &self.files {
            for object in &state.objects {
                let id = object.id();
                if let Some(first) = origin.get(&id) {
                    let p = format!(
                        "{}: {id} is also defined in {}; using that one",
                        path.display(),
                        first.display()
                    );
                    warn!("{p}");
                    problems.push(p);
                    continue;
                }
                origin.insert(id.clone(), path);
                let mut object = object.clone();
                if object.meta().generation.is_none() {
                    let fingerprint = object.spec_fingerprint();
                    let entry =
                        self.generations.entry(id.clone()).or_insert((fingerprint.clone(), 1));
                    if entry.0 != fingerprint {
                        *entry = (fingerprint, entry.1 + 1);
                    }
                    object.set_generation(entry.1);
                }
                seen.insert(id);
                model.insert(object);
            }
        }
        self.generations.retain(|id, _| seen.contains(id));
        (model, problems)
    }
}

fn read_file(
    path: &Path,
    stamp: Stamp,
    previous: Option<FileState>,
    problems: &mut Vec<String>,
) -> Option<FileState> {
    let mut report = |p: String| {
        warn!("{p}");
        problems.push(p);
    };
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            report(format!("{}: cannot read: {e}; keeping its last good objects", path.display()));
            return previous;
        }
    };
    let (docs, syntax) = documents(path, &text);
    let mut objects: Vec<Object> = Vec::new();
    let mut kept = 0;
    let previous_objects = previous.map(|p| p.objects).unwrap_or_default();
    let keep_previous = |id: &ObjectId| previous_objects.iter().find(|o| o.id() == *id).cloned();
    for (n, doc) in docs.into_iter().enumerate() {
        for result in parse_document(doc) {
            match result {
                Ok(Some(object)) => objects.push(object),
                Ok(None) => {}
                Err(e) => {
                    let last = e.id.as_ref().and_then(keep_previous);
                    let tail = if last.is_some() {
                        kept += 1;
                        "skipped; its last valid version stays"
                    } else {
                        "skipped"
                    };
                    report(format!("{}: document {}: {e}; {tail}", path.display(), n + 1));
                    objects.extend(last);
                }
            }
        }
    }
    if let Some(error) = syntax {
        // Documents after the syntax error were not read: keep what the last good read had.
        let have: BTreeSet<ObjectId> = objects.iter().map(Object::id).collect();
        let missing: Vec<Object> =
            previous_objects.iter().filter(|o| !have.contains(&o.id())).cloned().collect();
        report(format!(
            "{}: {error}; keeping {} object(s) from its last good version",
            path.display(),
            missing.len()
        ));
        objects.extend(missing);
    }
    if kept == 0 && !objects.is_empty() {
        info!(file = %path.display(), objects = objects.len(), "manifest read");
    }
    Some(FileState { stamp, objects })
}

/// Splits a file into documents. YAML may hold several (`---`); JSON files may hold a stream
/// of values. Stops at the first syntax error and returns it with the documents before it.
fn documents(path: &Path, text: &str) -> (Vec<Value>, Option<String>) {
    let mut docs = Vec::new();
    let json = path.extension().is_some_and(|e| e == "json");
    if json {
        for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            match value {
                Ok(v) => docs.push(v),
                Err(e) => return (docs, Some(format!("JSON syntax: {e}"))),
            }
        }
    } else {
        for de in serde_yaml_ng::Deserializer::from_str(text) {
            match Value::deserialize(de) {
                Ok(v) => docs.push(v),
                Err(e) => {
                    let n = docs.len() + 1;
                    return (docs, Some(format!("YAML error in document {n}: {e}")));
                }
            }
        }
    }
    (docs, None)
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, Stamp)>) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Hidden files and editor leftovers (.swp, foo~, #foo#) are not manifests.
        if name.starts_with('.') || name.ends_with('~') || name.starts_with('#') {
            continue;
        }
        let path = entry.path();
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            // Vanished between listing and stat: it is simply gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            walk(&path, out)?;
        } else if is_manifest(&path) {
            let stamp =
                Stamp { len: meta.len(), modified: meta.modified().ok(), inode: meta.ino() };
            out.push((path, stamp));
        }
    }
    Ok(())
}

/// Files the source reads.
pub fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-watch-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: ns}\nspec:\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /a}}]\n";

    #[test]
    fn broken_yaml_keeps_last_good_objects() {
        let d = dir("broken");
        let f = d.join("route.yaml");
        fs::write(&f, ROUTE).unwrap();
        let mut src = FileSource::new(&d);
        src.scan(&BTreeSet::new()).unwrap();
        assert_eq!(src.model().0.http_routes.len(), 1);
        fs::write(&f, "apiVersion: [unclosed\n").unwrap();
        let report = src.scan(&BTreeSet::from([f.clone()])).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].contains("route.yaml"));
        assert_eq!(src.model().0.http_routes.len(), 1, "last good version stays");
        fs::remove_file(&f).unwrap();
        src.scan(&BTreeSet::new()).unwrap();
        assert!(src.model().0.is_empty(), "deleting the file removes its objects");
    }

    #[test]
    fn invalid_object_keeps_its_last_valid_version() {
        let d = dir("invalid");
        let f = d.join("route.yaml");
        fs::write(&f, ROUTE).unwrap();
        let mut src = FileSource::new(&d);
        src.scan(&BTreeSet::new()).unwrap();
        fs::write(&f, ROUTE.replace("value: /a", "value: a")).unwrap();
        let report = src.scan(&BTreeSet::from([f])).unwrap();
        let p = &report.problems[0];
        assert!(
            p.contains("HTTPRoute ns/r") && p.contains("spec.rules[0].matches[0].path.value"),
            "{p}"
        );
        let (model, _) = src.model();
        let route = &model.http_routes.values().next().unwrap();
        let rules = route.spec.rules.as_ref().unwrap();
        let path = rules[0].matches.as_ref().unwrap()[0].path.as_ref().unwrap();
        assert_eq!(path.value.as_deref(), Some("/a"));
    }

    #[test]
    fn generation_counts_spec_changes() {
        let d = dir("gen");
        let f = d.join("nested/deeper/route.yml");
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, ROUTE).unwrap();
        let mut src = FileSource::new(&d);
        src.scan(&BTreeSet::new()).unwrap();
        let g = |src: &mut FileSource| {
            src.model().0.http_routes.values().next().unwrap().metadata.generation.unwrap()
        };
        assert_eq!(g(&mut src), 1);
        fs::write(&f, ROUTE.replace("/a", "/b")).unwrap();
        src.scan(&BTreeSet::from([f.clone()])).unwrap();
        assert_eq!(g(&mut src), 2);
        src.scan(&BTreeSet::from([f])).unwrap();
        assert_eq!(g(&mut src), 2, "re-reading an unchanged spec keeps the generation");
    }

    #[test]
    fn duplicates_first_file_wins() {
        let d = dir("dup");
        fs::write(d.join("a.yaml"), ROUTE).unwrap();
        fs::write(d.join("b.yaml"), ROUTE.replace("/a", "/b")).unwrap();
        let mut src = FileSource::new(&d);
        src.scan(&BTreeSet::new()).unwrap();
        let (model, problems) = src.model();
        assert_eq!(model.http_routes.len(), 1);
        assert!(problems[0].contains("also defined in"), "{problems:?}");
    }
}

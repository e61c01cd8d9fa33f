//! File source: a folder of YAML/JSON manifests, read recursively, re-read on change.
//!
//! First stage of config-sync in file mode (`files → model → compile → publish`). Each file keeps the
//! objects of its last good read, so a broken edit never blanks what was valid:
//!
//! - a file that no longer parses (YAML syntax, read error) keeps its last good objects;
//! - an object that no longer passes admission keeps its last valid version, like an API
//!   server rejecting the update;
//! - a file that is deleted takes its objects with it.
//!
//! Every problem is reported with the file, the document, the object and the field.
//!
//! The folder is untrusted too. The walk follows symbolic links (Kubernetes ConfigMap volumes
//! are links) but remembers every directory it entered, so a link back up (`ln -s . loop`) is
//! named and skipped instead of recursing forever; only regular files are read (a FIFO named
//! `x.yaml` would block `open` forever, a link to `/dev/zero` would read without end), opened
//! non-blocking and capped at [`MAX_MANIFEST_BYTES`]. Unreadable entries are named and skipped;
//! the rest of the folder still loads.
//!
//! A file rewritten in place (`cat > f`, `kubectl get -o yaml > f`, editors that save in place)
//! is truncated first and filled after: read in between, it is empty or short. A re-read that
//! finds the *same* file (inode) with fewer objects than before is therefore suspect: its
//! previous objects stay until the file has been quiet (size and mtime unchanged) for
//! [`QUIET`], and only then is the loss taken as meant. A file replaced by a rename (a new inode:
//! `kubectl`-style tools, most editors, ConfigMap updates) and a deleted file apply at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use serde_json::Value;
use tracing::{info, warn};

use crate::model::{Model, Object, ObjectId, parse_document};

/// Largest manifest file read (a Kubernetes object is at most ~1.5 MB in etcd; a file may
/// hold many). Larger files are named and skipped, keeping their last good objects.
pub(super) const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// How long a file that lost objects in place must stay unchanged before the loss is applied.
pub(super) const QUIET: Duration = Duration::from_millis(500);

/// A manifests folder and what was last read from it.
#[derive(Debug)]
pub struct FileSource {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// The objects of every file, merged (the first file in path order wins a duplicate);
    /// kept up to date as files are read and forgotten, so a change to one file of 5,000
    /// touches one file's objects (rebuilding it per reload took 6–20 ms at 5,000 routes).
    model: Model,
    /// The files that define each object, in path order (more than one: a duplicate).
    owners: HashMap<ObjectId, BTreeSet<PathBuf>>,
    generations: HashMap<ObjectId, (String, i64)>,
    /// Files that lost objects in place, with the stamp seen and since when it is unchanged.
    suspects: BTreeMap<PathBuf, (Stamp, Instant)>,
}

#[derive(Debug, Clone)]
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

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp { len: meta.len(), modified: meta.modified().ok(), inode: meta.ino() }
    }
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
        // Absolute, as the file watcher reports event paths: with a relative root every event
        // would look like a path outside the folder and wait for the periodic rescan.
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_owned());
        FileSource {
            root,
            files: BTreeMap::new(),
            model: Model::default(),
            owners: HashMap::new(),
            generations: HashMap::new(),
            suspects: BTreeMap::new(),
        }
    }

    /// When the next suspect file (rewritten in place, fewer objects) is due for a re-read.
    pub fn next_recheck(&self) -> Option<Instant> {
        self.suspects.values().map(|(_, since)| *since + QUIET).min()
    }

    /// The suspect files, to re-read when [`next_recheck`](Self::next_recheck) is due.
    pub fn suspects(&self) -> BTreeSet<PathBuf> {
        self.suspects.keys().cloned().collect()
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Re-reads every file whose size, mtime or inode changed, plus those in `force`. Walks the
    /// whole folder: for start-up (the periodic safety-net rescan walks on another thread,
    /// `walk_folder`, and applies the result with `apply`).
    pub fn scan(&mut self, force: &BTreeSet<PathBuf>) -> io::Result<ScanReport> {
        let walked = walk_folder(&self.root)?;
        Ok(self.apply(walked, force))
    }

    /// Brings the source up to date with a walk of its folder: forgets files the walk did not
    /// find and re-reads those whose stamp moved, plus those in `force`. The walk may be older
    /// than file events handled since it began: a file it missed is forgotten only if it is
    /// still gone now (an event may have added it meanwhile), and one it found that has since
    /// vanished reads as gone.
    pub(crate) fn apply(&mut self, walked: Walked, force: &BTreeSet<PathBuf>) -> ScanReport {
        let mut report = ScanReport { problems: walked.problems, ..ScanReport::default() };
        let present: BTreeSet<&PathBuf> = walked.found.iter().map(|(p, _)| p).collect();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p) && !fs::metadata(p).is_ok_and(|m| m.is_file()))
            .cloned()
            .collect();
        for path in gone {
            self.forget(&path, &mut report);
        }
        for (path, stamp) in walked.found {
            let forced = force.contains(&path);
            if !forced && self.files.get(&path).is_some_and(|s| s.stamp == stamp) {
                continue;
            }
            // Stat again: an event may have read it since the walk, or it may be gone (the
            // next event or walk sees to that).
            let Ok(meta) = fs::metadata(&path) else { continue };
            let stamp = Stamp::of(&meta);
            if !forced && self.files.get(&path).is_some_and(|s| s.stamp == stamp) {
                continue;
            }
            self.read(path, stamp, &mut report);
        }
        report
    }

    /// Looks only at `paths` (from file events): re-reads manifests that exist, forgets those
    /// that are gone, walks directories that appeared and forgets what was under directories
    /// that vanished. A change to one file of 5,000 stats one file instead of walking them all
    /// (45 ms at 5,000 files).
    pub fn scan_paths(&mut self, paths: &BTreeSet<PathBuf>) -> io::Result<ScanReport> {
        let mut report = ScanReport::default();
        for path in paths {
            match fs::metadata(path) {
                Ok(meta) if meta.is_dir() => {
                    let mut found = Vec::new();
                    walk(path, &mut found, &mut BTreeSet::new(), &mut report.problems);
                    for (file, stamp) in found {
                        if self.files.get(&file).is_none_or(|s| s.stamp != stamp) {
                            self.read(file, stamp, &mut report);
                        }
                    }
                }
                Ok(_) if !path.starts_with(&self.root) || self.hidden_under_root(path) => {}
                Ok(meta) if is_manifest(path) => {
                    self.read(path.clone(), Stamp::of(&meta), &mut report);
                }
                Ok(_) => {}
                Err(_) => {
                    // The path and everything under it sort together (paths compare by
                    // component): a range, not a scan of every file (2 ms at 5,000 files, paid
                    // for each editor's temporary file that came and went).
                    let under: Vec<PathBuf> = self
                        .files
                        .range::<Path, _>((
                            std::ops::Bound::Included(path.as_path()),
                            std::ops::Bound::Unbounded,
                        ))
                        .map(|(f, _)| f)
                        .take_while(|f| f.starts_with(path))
                        .cloned()
                        .collect();
                    for f in under {
                        self.forget(&f, &mut report);
                    }
                }
            }
        }
        Ok(report)
    }

    /// Some component below the root is hidden (e.g. Kubernetes ConfigMap volumes keep the
    /// real files under `..data/`; the visible names are links to them).
    fn hidden_under_root(&self, path: &Path) -> bool {
        path.strip_prefix(&self.root)
            .map_or(true, |rel| rel.components().any(|c| hidden(Path::new(c.as_os_str()))))
    }

    fn forget(&mut self, path: &Path, report: &mut ScanReport) {
        self.suspects.remove(path);
        if let Some(state) = self.files.remove(path) {
            info!(file = %path.display(), "manifest removed");
            self.unmerge(path, &state.objects, &BTreeSet::new());
            report.changed = true;
        }
    }

    /// Takes `path`'s new objects into the model (each where this file is the first to define
    /// it), reporting duplicates.
    fn merge(&mut self, path: &Path, objects: &[Object], problems: &mut Vec<String>) {
        let mut seen = BTreeSet::new();
        for object in objects {
            let id = object.id();
            if !seen.insert(id.clone()) {
                let p = format!("{}: {id} is defined twice; using the first", path.display());
                warn!("{p}");
                problems.push(p);
                continue;
            }
            let owners = self.owners.entry(id.clone()).or_default();
            owners.insert(path.to_owned());
            match owners.first() {
                Some(first) if first == path => self.model.insert(object.clone()),
                Some(first) => {
                    let p = format!(
                        "{}: {id} is also defined in {}; using that one",
                        path.display(),
                        first.display()
                    );
                    warn!("{p}");
                    problems.push(p);
                }
                None => {}
            }
        }
    }

    /// Takes out of the model what `path` defined in `objects` and no longer defines (`kept`):
    /// an object another file defines too falls back to that file's version.
    fn unmerge(&mut self, path: &Path, objects: &[Object], kept: &BTreeSet<ObjectId>) {
        for object in objects {
            let id = object.id();
            if kept.contains(&id) {
                continue;
            }
            let Some(owners) = self.owners.get_mut(&id) else { continue };
            let was_first = owners.first().is_some_and(|f| f == path);
            owners.remove(path);
            let next = owners.first().cloned();
            match next {
                None => {
                    self.owners.remove(&id);
                    self.model.remove(&id);
                    // A re-created object starts at generation 1.
                    self.generations.remove(&id);
                }
                Some(next) if was_first => {
                    let version = self
                        .files
                        .get(&next)
                        .and_then(|s| s.objects.iter().find(|o| o.id() == id).cloned());
                    match version {
                        Some(o) => self.model.insert(o),
                        None => self.model.remove(&id),
                    }
                }
                Some(_) => {}
            }
        }
    }

    fn read(&mut self, path: PathBuf, stamp: Stamp, report: &mut ScanReport) {
        report.read += 1;
        let previous = self.files.remove(&path);
        let Some(mut state) = read_file(&path, stamp, previous.as_ref(), &mut report.problems)
        else {
            if let Some(previous) = previous {
                self.unmerge(&path, &previous.objects, &BTreeSet::new());
            }
            report.changed = true;
            return;
        };
        let ids: BTreeSet<ObjectId> = state.objects.iter().map(Object::id).collect();
        if let Some(prev) = &previous
            && prev.stamp.inode == state.stamp.inode
        {
            let lost = prev.objects.iter().filter(|o| !ids.contains(&o.id())).count();
            if lost > 0 && !self.quiet_since(&path, &state.stamp) {
                info!(
                    file = %path.display(),
                    lost,
                    "manifest lost objects while rewritten in place; keeping its previous objects until it is quiet for {QUIET:?}"
                );
                // Its objects stay merged as they were.
                if let Some(previous) = previous {
                    self.files.insert(path, previous);
                }
                return;
            }
        }
        self.suspects.remove(&path);
        for object in &mut state.objects {
            self.assign_generation(object);
        }
        if let Some(previous) = previous {
            self.unmerge(&path, &previous.objects, &ids);
        }
        self.merge(&path, &state.objects, &mut report.problems);
        self.files.insert(path, state);
        report.changed = true;
    }

    /// Whether `path` has kept `stamp` for [`QUIET`]; starts (or restarts) the clock when the
    /// stamp is new.
    fn quiet_since(&mut self, path: &Path, stamp: &Stamp) -> bool {
        match self.suspects.get(path) {
            Some((seen, since)) if seen == stamp => since.elapsed() >= QUIET,
            _ => {
                self.suspects.insert(path.to_owned(), (stamp.clone(), Instant::now()));
                false
            }
        }
    }

    /// Fills in `metadata.generation` where the manifest left it out: it starts at 1 and goes
    /// up each time the object's spec changes, as on an API server. Done once per read, not
    /// per reload (fingerprinting 5,000 specs on every reload took 30 ms).
    fn assign_generation(&mut self, object: &mut Object) {
        let id = object.id();
        let fingerprint = object.spec_fingerprint();
        let known = self.generations.get(&id);
        if object.meta().generation.is_some() {
            // Given by the manifest; remember it so a later version without one continues it.
            let g = object.meta().generation.unwrap_or(1);
            self.generations.insert(id, (fingerprint, g));
            return;
        }
        let g = match known {
            Some((f, g)) if *f == fingerprint => *g,
            Some((_, g)) => g + 1,
            None => 1,
        };
        self.generations.insert(id, (fingerprint, g));
        object.set_generation(g);
    }

    /// All objects, merged over files (the first file in path order wins a duplicate;
    /// duplicates are reported by the scan that finds them). Objects are shared (`Arc`).
    pub fn model(&self) -> &Model {
        &self.model
    }
}

fn read_file(
    path: &Path,
    stamp: Stamp,
    previous: Option<&FileState>,
    problems: &mut Vec<String>,
) -> Option<FileState> {
    let mut report = |p: String| {
        warn!("{p}");
        problems.push(p);
    };
    let text = match read_regular(path) {
        Ok(t) => t,
        Err(e) => {
            report(format!("{}: cannot read: {e}; keeping its last good objects", path.display()));
            return previous.cloned();
        }
    };
    let (docs, syntax) = documents(path, &text);
    let mut objects: Vec<Object> = Vec::new();
    let mut kept = 0;
    let previous_objects = previous.map_or(&[][..], |p| p.objects.as_slice());
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
        // serde_yaml_ng stops deep nesting with its recursion limit, but only after scanning
        // the whole flow collection, in time that grows with the square of its depth: 200 KB of
        // `[` took 6 s and 100,000 nested `{a: ` more than 20 s before the error. Refuse
        // such a file before parsing.
        if let Some((line, column)) = flow_too_deep(text, MAX_FLOW_DEPTH) {
            return (
                docs,
                Some(format!(
                    "flow collections ([ ] {{ }}) nested deeper than {MAX_FLOW_DEPTH} at line {line} column {column}"
                )),
            );
        }
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

/// Deepest nesting of YAML flow collections accepted (Gateway API objects need ~10).
pub(super) const MAX_FLOW_DEPTH: usize = 64;

/// Where YAML flow collections first nest deeper than `limit`, as (line, column), 1-based.
/// One pass, no allocation. A `[` or `{` opens a collection only where a value may start
/// (after `:`, `-`, `,`, `?`, another opener, or at the start of a line, spaces aside): inside
/// a plain scalar (`/img/[a-z]`) it is a literal. Quoted scalars and comments are skipped.
/// Block scalars are not recognised; their text could only make this count too high, and
/// then only past a depth no manifest reaches.
fn flow_too_deep(text: &str, limit: usize) -> Option<(usize, usize)> {
    let (mut depth, mut line, mut column) = (0usize, 1usize, 0usize);
    let mut prev = b'\n'; // last byte other than a space or tab
    let mut quote: Option<u8> = None;
    let mut comment = false;
    let mut escaped = false;
    for &b in text.as_bytes() {
        column += 1;
        if b == b'\n' {
            (line, column, comment, prev) = (line + 1, 0, false, b'\n');
            continue;
        }
        if comment {
            continue;
        }
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if q == b'"' && b == b'\\' {
                escaped = true;
            } else if b == q {
                quote = None;
                prev = b;
            }
            continue;
        }
        match b {
            b' ' | b'\t' => continue,
            b'#' if matches!(prev, b'\n' | b' ') => comment = true,
            b'"' | b'\'' if matches!(prev, b'\n' | b':' | b'-' | b',' | b'[' | b'{' | b'?') => {
                quote = Some(b);
            }
            b'[' | b'{' if matches!(prev, b'\n' | b':' | b'-' | b',' | b'[' | b'{' | b'?') => {
                depth += 1;
                if depth > limit {
                    return Some((line, column));
                }
            }
            b']' | b'}' if depth > 0 => depth -= 1,
            _ => {}
        }
        prev = b;
    }
    None
}

/// Reads a manifest: a regular file only, opened non-blocking (a FIFO swapped in after the
/// walk looked cannot block the thread), at most [`MAX_MANIFEST_BYTES`], UTF-8.
fn read_regular(path: &Path) -> io::Result<String> {
    let file = fs::OpenOptions::new().read(true).custom_flags(libc_nonblock()).open(path)?;
    let meta = file.metadata()?;
    check_regular(&meta)?;
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_MANIFEST_BYTES) as usize);
    file.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not UTF-8: {e}")))
}

/// `O_NONBLOCK`, spelled out: config-sync forbids unsafe code and does not link libc itself.
const fn libc_nonblock() -> i32 {
    0o4000
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("larger than {} MiB; skipped", MAX_MANIFEST_BYTES >> 20),
    )
}

/// Only regular files are manifests, and only up to the size cap.
fn check_regular(meta: &fs::Metadata) -> io::Result<()> {
    let t = meta.file_type();
    let what = if t.is_file() {
        return if meta.len() > MAX_MANIFEST_BYTES { Err(too_large()) } else { Ok(()) };
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{what}, not a regular file; skipped")))
}

/// What a walk of the folder found: every manifest with its stamp, and the problems met.
#[derive(Debug)]
pub(crate) struct Walked {
    found: Vec<(PathBuf, Stamp)>,
    problems: Vec<String>,
}

/// Walks `root` and stats every manifest under it; touches no [`FileSource`], so it can run
/// off the event loop (45 ms at 5,000 files). The root itself must be readable; problems
/// below it are reported and skipped.
pub(crate) fn walk_folder(root: &Path) -> io::Result<Walked> {
    fs::read_dir(root)?;
    let mut walked = Walked { found: Vec::new(), problems: Vec::new() };
    walk(root, &mut walked.found, &mut BTreeSet::new(), &mut walked.problems);
    Ok(walked)
}

/// Lists the manifests under `dir` (following links), skipping hidden entries. `visited`
/// holds the (device, inode) of every directory entered, so a link that leads back to one is
/// a loop: named in `problems` and skipped. Entries that cannot be read are named and skipped.
fn walk(
    dir: &Path,
    out: &mut Vec<(PathBuf, Stamp)>,
    visited: &mut BTreeSet<(u64, u64)>,
    problems: &mut Vec<String>,
) {
    match fs::metadata(dir) {
        Ok(m) if !visited.insert((m.dev(), m.ino())) => {
            problem(
                problems,
                format!(
                    "{}: a symbolic link loop (leads back to a folder already read); skipped",
                    dir.display()
                ),
            );
            return;
        }
        Ok(_) => {}
        Err(e) => {
            problem(problems, format!("{}: cannot read the folder: {e}; skipped", dir.display()));
            return;
        }
    }
    let entries = fs::read_dir(dir).and_then(|it| it.collect::<Result<Vec<_>, _>>());
    let mut entries = match entries {
        Ok(e) => e,
        Err(e) => {
            problem(problems, format!("{}: cannot read the folder: {e}; skipped", dir.display()));
            return;
        }
    };
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if hidden(&path) {
            continue;
        }
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            // Vanished between listing and stat: it is simply gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if fs::symlink_metadata(&path).is_ok() {
                    problem(
                        problems,
                        format!("{}: a symbolic link to nothing; skipped", path.display()),
                    );
                }
                continue;
            }
            Err(e) => {
                problem(problems, format!("{}: {e}; skipped", path.display()));
                continue;
            }
        };
        if meta.is_dir() {
            walk(&path, out, visited, problems);
        } else if is_manifest(&path) {
            if let Err(e) = check_regular(&meta) {
                problem(problems, format!("{}: {e}", path.display()));
                continue;
            }
            out.push((path, Stamp::of(&meta)));
        }
    }
}

fn problem(problems: &mut Vec<String>, p: String) {
    warn!("{p}");
    problems.push(p);
}

/// Hidden files and editor leftovers (.swp, foo~, #foo#) are not manifests.
fn hidden(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    name.starts_with('.') || name.ends_with('~') || name.starts_with('#')
}

/// Files the source reads.
pub(super) fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

#[cfg(test)]
mod tests;

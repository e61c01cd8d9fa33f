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
    assert_eq!(src.model().http_routes.len(), 1);
    fs::write(&f, "apiVersion: [unclosed\n").unwrap();
    let report = src.scan(&BTreeSet::from([f.clone()])).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].contains("route.yaml"));
    assert_eq!(src.model().http_routes.len(), 1, "last good version stays");
    fs::remove_file(&f).unwrap();
    src.scan(&BTreeSet::new()).unwrap();
    assert!(src.model().is_empty(), "deleting the file removes its objects");
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
    let model = src.model();
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
        src.model().http_routes.values().next().unwrap().metadata.generation.unwrap()
    };
    assert_eq!(g(&mut src), 1);
    fs::write(&f, ROUTE.replace("/a", "/b")).unwrap();
    src.scan(&BTreeSet::from([f.clone()])).unwrap();
    assert_eq!(g(&mut src), 2);
    src.scan(&BTreeSet::from([f])).unwrap();
    assert_eq!(g(&mut src), 2, "re-reading an unchanged spec keeps the generation");
}

#[test]
fn unchanged_files_are_not_read_again() {
    let d = dir("incremental");
    for i in 0..20 {
        fs::write(d.join(format!("r{i}.yaml")), ROUTE.replace("name: r,", &format!("name: r{i},")))
            .unwrap();
    }
    let mut src = FileSource::new(&d);
    assert_eq!(src.scan(&BTreeSet::new()).unwrap().read, 20);
    assert_eq!(src.scan(&BTreeSet::new()).unwrap().read, 0);
    fs::write(d.join("r3.yaml"), ROUTE.replace("/a", "/z")).unwrap();
    let report = src.scan(&BTreeSet::from([d.join("r3.yaml")])).unwrap();
    assert_eq!(report.read, 1);
}

#[test]
fn event_paths_update_only_what_changed() {
    let d = dir("paths");
    let route = |n: &str| ROUTE.replace("name: r,", &format!("name: {n},"));
    fs::write(d.join("a.yaml"), route("a")).unwrap();
    let mut src = FileSource::new(&d);
    src.scan(&BTreeSet::new()).unwrap();
    // A new file, a new folder with a file, and a file in a hidden folder.
    fs::write(d.join("b.yaml"), route("b")).unwrap();
    fs::create_dir_all(d.join("team/x")).unwrap();
    fs::write(d.join("team/x/c.yaml"), route("c")).unwrap();
    fs::create_dir_all(d.join("..data")).unwrap();
    fs::write(d.join("..data/hidden.yaml"), route("hidden")).unwrap();
    let r = src
        .scan_paths(&BTreeSet::from([
            d.join("b.yaml"),
            d.join("team"),
            d.join("..data/hidden.yaml"),
        ]))
        .unwrap();
    assert_eq!(r.read, 2);
    let names = |src: &mut FileSource| -> Vec<String> {
        src.model().http_routes.keys().map(|k| k.name.clone()).collect()
    };
    assert_eq!(names(&mut src), vec!["a", "b", "c"]);
    // A sibling whose name starts like the folder's (it sorts right after the folder's files).
    fs::write(d.join("team.yaml"), route("t")).unwrap();
    src.scan_paths(&BTreeSet::from([d.join("team.yaml")])).unwrap();
    // Removing a folder forgets what was under it; removing a file forgets it.
    fs::remove_dir_all(d.join("team")).unwrap();
    fs::remove_file(d.join("a.yaml")).unwrap();
    let r = src.scan_paths(&BTreeSet::from([d.join("team"), d.join("a.yaml")])).unwrap();
    assert!(r.changed);
    assert_eq!(names(&mut src), vec!["b", "t"]);
}

#[test]
fn relative_root_accepts_absolute_event_paths() {
    // The file watcher reports absolute paths even for a folder given as a relative one.
    let rel = PathBuf::from(format!("../target/sluice-test-relative-{}", std::process::id()));
    let _ = fs::remove_dir_all(&rel);
    fs::create_dir_all(&rel).unwrap();
    let mut src = FileSource::new(&rel);
    src.scan(&BTreeSet::new()).unwrap();
    fs::write(rel.join("a.yaml"), ROUTE).unwrap();
    let event = std::env::current_dir().unwrap().join(&rel).join("a.yaml");
    let r = src.scan_paths(&BTreeSet::from([event])).unwrap();
    fs::remove_dir_all(&rel).unwrap();
    assert_eq!(r.read, 1);
    assert_eq!(src.model().http_routes.len(), 1);
}

#[test]
fn duplicates_first_file_wins() {
    let d = dir("dup");
    fs::write(d.join("a.yaml"), ROUTE).unwrap();
    fs::write(d.join("b.yaml"), ROUTE.replace("/a", "/b")).unwrap();
    let mut src = FileSource::new(&d);
    let problems = src.scan(&BTreeSet::new()).unwrap().problems;
    let model = src.model();
    assert_eq!(model.http_routes.len(), 1);
    assert!(problems[0].contains("also defined in"), "{problems:?}");
    let path = |src: &FileSource| {
        let route = src.model().http_routes.values().next().unwrap().clone();
        let rules = route.spec.rules.clone().unwrap();
        rules[0].matches.clone().unwrap()[0].path.clone().unwrap().value.unwrap()
    };
    assert_eq!(path(&src), "/a", "a.yaml comes first");
    // Its first definition gone, the other file's takes over; back, it wins again.
    fs::remove_file(d.join("a.yaml")).unwrap();
    src.scan(&BTreeSet::new()).unwrap();
    assert_eq!(path(&src), "/b");
    fs::write(d.join("a.yaml"), ROUTE.replace("/a", "/c")).unwrap();
    src.scan(&BTreeSet::new()).unwrap();
    assert_eq!(path(&src), "/c");
    fs::remove_file(d.join("b.yaml")).unwrap();
    src.scan(&BTreeSet::new()).unwrap();
    assert_eq!(path(&src), "/c");
    fs::remove_file(d.join("a.yaml")).unwrap();
    src.scan(&BTreeSet::new()).unwrap();
    assert!(src.model().is_empty());
}

#[test]
fn symlink_loops_fifos_devices_and_huge_files_are_named_and_skipped() {
    let d = dir("hostile");
    fs::write(d.join("good.yaml"), ROUTE).unwrap();
    std::os::unix::fs::symlink(".", d.join("loop")).unwrap();
    fs::create_dir_all(d.join("sub")).unwrap();
    std::os::unix::fs::symlink("..", d.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.join("zero.yaml")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x", d.join("dangling.yaml")).unwrap();
    let fifo = d.join("pipe.yaml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let big = fs::File::create(d.join("big.yaml")).unwrap();
    big.set_len(MAX_MANIFEST_BYTES + 1).unwrap();
    let mut src = FileSource::new(&d);
    let report = src.scan(&BTreeSet::new()).unwrap();
    let all = report.problems.join("\n");
    for name in ["loop", "sub/up", "zero.yaml", "pipe.yaml", "big.yaml", "dangling.yaml"] {
        assert!(all.contains(&d.join(name).display().to_string()), "{name} not named:\n{all}");
    }
    assert!(all.contains("symbolic link loop") && all.contains("a FIFO"), "{all}");
    assert!(all.contains("a device") && all.contains("larger than"), "{all}");
    assert_eq!(src.model().http_routes.len(), 1, "the good file still loads");
    // Event paths take the same checks (a FIFO event must not block).
    let r = src.scan_paths(&BTreeSet::from([fifo, d.join("zero.yaml")])).unwrap();
    assert_eq!(src.model().http_routes.len(), 1, "{:?}", r.problems);
}

#[test]
fn a_file_emptied_in_place_keeps_its_objects_until_quiet() {
    let d = dir("in-place");
    let f = d.join("route.yaml");
    let two = format!("{ROUTE}---\n{}", ROUTE.replace("name: r,", "name: r2,"));
    fs::write(&f, &two).unwrap();
    let mut src = FileSource::new(&d);
    src.scan(&BTreeSet::new()).unwrap();
    assert_eq!(src.model().http_routes.len(), 2);
    // Truncated in place (same inode): suspect, nothing changes.
    fs::OpenOptions::new().write(true).truncate(true).open(&f).unwrap();
    let r = src.scan_paths(&BTreeSet::from([f.clone()])).unwrap();
    assert!(!r.changed);
    assert_eq!(src.model().http_routes.len(), 2);
    assert!(src.next_recheck().is_some());
    // Half written: still suspect.
    fs::write(&f, ROUTE).unwrap();
    src.scan_paths(&BTreeSet::from([f.clone()])).unwrap();
    assert_eq!(src.model().http_routes.len(), 2);
    // Finished: whole again, applied at once, no longer suspect.
    fs::write(&f, &two).unwrap();
    let r = src.scan_paths(&BTreeSet::from([f.clone()])).unwrap();
    assert!(r.changed);
    assert!(src.next_recheck().is_none());
    // A loss that stays quiet is meant: applied after QUIET.
    fs::write(&f, ROUTE).unwrap();
    src.scan_paths(&BTreeSet::from([f.clone()])).unwrap();
    assert_eq!(src.model().http_routes.len(), 2);
    std::thread::sleep(QUIET + Duration::from_millis(50));
    let r = src.scan_paths(&src.suspects()).unwrap();
    assert!(r.changed);
    assert_eq!(src.model().http_routes.len(), 1);
    // A file replaced by a rename (new inode) applies at once.
    let tmp = d.join(".tmp");
    fs::write(&tmp, "").unwrap();
    fs::rename(&tmp, &f).unwrap();
    src.scan_paths(&BTreeSet::from([f])).unwrap();
    assert_eq!(src.model().http_routes.len(), 0);
}

#[test]
fn deep_flow_nesting_is_refused_before_parsing() {
    assert_eq!(flow_too_deep(&"[".repeat(200_000), 64), Some((1, 65)));
    let nested = format!("spec: {}1{}", "{a: ".repeat(100), "}".repeat(100));
    assert_eq!(flow_too_deep(&nested, 64).map(|(l, _)| l), Some(1));
    // Brackets inside plain and quoted scalars and comments are literals.
    let plain = "value: /img/[a-z]+\\.png\n".repeat(1000)
        + &"name: \"[[[[\"\n".repeat(100)
        + &"# [[[[[[\n".repeat(100)
        + "matches: [{path: {value: \"/a[\"}}, {headers: [{name: x}]}]\n";
    assert_eq!(flow_too_deep(&plain, 64), None);
    assert_eq!(flow_too_deep(ROUTE, 64), None);
    let d = dir("deep");
    fs::write(d.join("deep.yaml"), "[".repeat(200_000)).unwrap();
    let start = Instant::now();
    let r = FileSource::new(&d).scan(&BTreeSet::new()).unwrap();
    assert!(r.problems[0].contains("nested deeper than 64"), "{:?}", r.problems);
    assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
}

#[test]
fn objects_over_the_crd_limits_are_refused_naming_file_and_field() {
    let d = dir("limits");
    let rules = "  - matches: [{path: {value: /x}}]\n".repeat(10_000);
    let route = ROUTE.replace(
        "  rules:\n  - matches: [{path: {type: PathPrefix, value: /a}}]\n",
        &format!("  rules:\n{rules}"),
    );
    fs::write(d.join("huge.yaml"), route).unwrap();
    let mut src = FileSource::new(&d);
    let r = src.scan(&BTreeSet::new()).unwrap();
    let p = &r.problems[0];
    assert!(
        p.contains("huge.yaml") && p.contains("spec.rules") && p.contains("10000 items"),
        "{p}"
    );
    assert!(src.model().http_routes.is_empty());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// The model kept up to date file by file equals one read from scratch, after any sequence
    /// of files written (several objects each, the same object in several files), replaced
    /// and removed.
    #[test]
    fn the_incremental_model_equals_a_fresh_read(
        ops in proptest::collection::vec((0usize..4, proptest::option::of(proptest::collection::vec((0usize..4, 0usize..3), 0..4))), 1..10),
    ) {
        let d = dir("model-equivalence");
        let mut src = FileSource::new(&d);
        src.scan(&BTreeSet::new()).unwrap();
        for (file, content) in ops {
            let path = d.join(format!("f{file}.yaml"));
            match content {
                Some(objects) => {
                    let docs: Vec<String> = objects
                        .iter()
                        .map(|(name, variant)| {
                            ROUTE
                                .replace("name: r,", &format!("name: r{name}, generation: 1,"))
                                .replace("/a", &format!("/v{variant}"))
                        })
                        .collect();
                    // Replaced by a rename, as tools do (in place, a shrinking file waits).
                    let tmp = d.join("next.tmp");
                    fs::write(&tmp, docs.join("---\n")).unwrap();
                    fs::rename(&tmp, &path).unwrap();
                    src.scan_paths(&BTreeSet::from([path])).unwrap();
                }
                None => {
                    let _ = fs::remove_file(&path);
                    src.scan_paths(&BTreeSet::from([path])).unwrap();
                }
            }
            let mut fresh = FileSource::new(&d);
            fresh.scan(&BTreeSet::new()).unwrap();
            proptest::prop_assert_eq!(src.model(), fresh.model());
        }
    }
}

#[test]
fn a_walk_older_than_the_events_handled_since_neither_loses_nor_revives_a_file() {
    let d = dir("stale-walk");
    let route = |i: usize| ROUTE.replace("name: r,", &format!("name: r{i},"));
    for i in 0..3 {
        fs::write(d.join(format!("r{i}.yaml")), route(i)).unwrap();
    }
    let mut src = FileSource::new(&d);
    src.scan(&BTreeSet::new()).unwrap();
    // The rescan's walk happens (on another thread), then file events are handled before its
    // result is applied: r3 added, r0 removed, r1 changed.
    let walked = walk_folder(&d).unwrap();
    let (added, removed, changed) = (d.join("r3.yaml"), d.join("r0.yaml"), d.join("r1.yaml"));
    fs::write(&added, route(3)).unwrap();
    fs::remove_file(&removed).unwrap();
    fs::write(&changed, route(1).replace("/a", "/changed")).unwrap();
    src.scan_paths(&BTreeSet::from([added.clone(), removed, changed])).unwrap();
    let names = |src: &FileSource| -> Vec<String> {
        src.model().http_routes.keys().map(|k| k.name.clone()).collect()
    };
    assert_eq!(names(&src), ["r1", "r2", "r3"]);
    let report = src.apply(walked, &BTreeSet::new());
    assert_eq!(names(&src), ["r1", "r2", "r3"], "the walk did not see r3 and did see r0");
    assert_eq!(report.read, 0, "r1 was read by its event; the walk's older stamp is not news");
    assert!(!report.changed);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // A walk taken now agrees, and one that missed a change (no event came) reads it.
    fs::write(&added, route(3).replace("/a", "/quiet")).unwrap();
    let report = src.apply(walk_folder(&d).unwrap(), &BTreeSet::new());
    assert_eq!(report.read, 1);
    assert!(report.changed);
    fs::remove_file(&added).unwrap();
    let report = src.apply(walk_folder(&d).unwrap(), &BTreeSet::new());
    assert!(report.changed, "a file gone with no event is forgotten by the next walk");
    assert_eq!(names(&src), ["r1", "r2"]);
}

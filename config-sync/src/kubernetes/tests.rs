use super::status::{carry_transition_times, same_parents};
use super::stores::model;
use super::*;

#[test]
fn objects_are_trimmed_and_parsed_like_files() {
    let o: DynamicObject = serde_json::from_value(json!({
        "metadata": {
            "name": "r", "namespace": "apps", "resourceVersion": "7", "generation": 3,
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "me"}
        },
        "spec": {"parentRefs": [{"name": "gw"}]},
        "status": {"parents": [{"controllerName": "example.com/other"}]}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let trimmed = trim(o);
    assert!(trimmed.metadata.managed_fields.is_none());
    let annotations = trimmed.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.keys().collect::<Vec<_>>(), ["keep"]);
    // A list item carries no apiVersion/kind: they come from what was watched.
    let (key, stored) = parse(Kind::HttpRoute, GATEWAY_GROUP, "v1", &trimmed)
        .unwrap_or_else(|| panic!("did not parse"));
    assert_eq!(key, Key::new("apps", "r"));
    assert_eq!(stored.resource_version.as_deref(), Some("7"));
    assert_eq!(stored.object.meta().generation, Some(3));
    assert_eq!(stored.status["parents"][0]["controllerName"], "example.com/other");
}

#[test]
fn transition_times_carry_over_unless_a_condition_flips() {
    let cond = |t: &str, s: &str, at: &str| json!({"type": t, "status": s, "reason": t, "message": "", "lastTransitionTime": at, "observedGeneration": 1});
    let current = json!({
        "conditions": [cond("Accepted", "True", "old"), cond("Programmed", "True", "old")],
        "listeners": [{"name": "http", "conditions": [cond("Accepted", "True", "old")]}]
    });
    let mut desired = json!({
        "conditions": [cond("Accepted", "True", "now"), cond("Programmed", "False", "now")],
        "listeners": [{"name": "http", "conditions": [cond("Accepted", "True", "now")]}]
    });
    carry_transition_times(&mut desired, &current);
    assert_eq!(desired["conditions"][0]["lastTransitionTime"], "old");
    assert_eq!(desired["conditions"][1]["lastTransitionTime"], "now", "flipped: time moves");
    assert_eq!(desired["listeners"][0]["conditions"][0]["lastTransitionTime"], "old");
    // Equal after carrying: nothing to write.
    let mut again = current.clone();
    again["conditions"][0]["lastTransitionTime"] = json!("now");
    carry_transition_times(&mut again, &current);
    assert_eq!(again, current);
}

#[test]
fn route_parents_compare_our_entries_and_count_the_others() {
    let ours = json!({"controllerName": "us", "parentRef": {"name": "gw"}, "conditions": []});
    let theirs = json!({"controllerName": "them", "parentRef": {"name": "x"}, "conditions": []});
    let current = json!({"parents": [theirs, ours]});
    assert!(same_parents(&json!({"parents": [theirs, ours]}), &current, "us", 1));
    assert!(!same_parents(&json!({"parents": [theirs]}), &current, "us", 1));
    // The other controller's entry went away meanwhile: write (keeping what is there now).
    assert!(!same_parents(&json!({"parents": [ours]}), &json!({"parents": [theirs]}), "us", 0));
}

#[test]
fn a_relist_replaces_a_kind_only_when_complete_and_the_kept_model_follows() {
    let mut stores = BTreeMap::new();
    let stored = |name: &str| {
        let o: DynamicObject = serde_json::from_value(json!({"metadata": {"name": name}}))
            .unwrap_or_else(|e| panic!("{e}"));
        parse(Kind::Namespace, "", "v1", &o).unwrap_or_else(|| panic!("did not parse"))
    };
    // The model kept beside the stores is the one they make, after every event.
    let mut mirror = Mirror { model: Model::default(), stale: true };
    let mut send = |stores: &mut BTreeMap<Kind, KindStore>, event: Seen| {
        let changed = mirror.apply(stores, Update { kind: Kind::Namespace, event });
        assert_eq!(mirror.model(stores), &model(stores));
        changed
    };
    let (k, s) = stored("a");
    send(&mut stores, Seen::Init);
    send(&mut stores, Seen::Listed(k, s));
    assert!(send(&mut stores, Seen::InitDone));
    assert_eq!(model(&stores).len(), 1);
    // A relist in progress leaves the current objects alone...
    send(&mut stores, Seen::Init);
    let (k, s) = stored("b");
    assert!(!send(&mut stores, Seen::Listed(k, s)));
    assert_eq!(model(&stores).len(), 1);
    assert!(stores[&Kind::Namespace].objects.contains_key(&Key::new("", "a")));
    // ...and replaces them when it completes ("a" is gone, "b" is there).
    assert!(send(&mut stores, Seen::InitDone));
    let ns = &stores[&Kind::Namespace].objects;
    assert!(ns.contains_key(&Key::new("", "b")) && !ns.contains_key(&Key::new("", "a")));
    let (k, s) = stored("c");
    assert!(send(&mut stores, Seen::Applied(k, s)));
    assert!(send(&mut stores, Seen::Deleted(Key::new("", "b"))));
    assert!(send(&mut stores, Seen::Deleted(Key::new("", "c"))));
    assert_eq!(model(&stores).len(), 0);
}

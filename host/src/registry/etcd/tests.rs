use super::*;

#[test]
fn log_parts_round_trip_and_split_by_bytes() {
    let ops: Vec<Op> =
        (0..10).map(|i| (format!("/w/r/live/task-{i}"), (i % 3 != 0).then(|| vec![i as u8; 100]))).collect();
    let parts = parts_of((3, 7), ops.clone(), 400);
    assert!(parts.len() > 1, "{} parts", parts.len());
    assert!(parts.iter().all(|p| p.parts == parts.len() as u32 && p.group == (3, 7)));
    let back: Vec<Op> = parts.iter().flat_map(|p| LogPart::decode(&p.encode()).unwrap().ops).collect();
    assert_eq!(back, ops);
    assert_eq!(LogPart::decode(b"WLG1\x01"), None);
}

#[test]
fn a_load_replays_complete_groups_over_the_records_and_skips_an_incomplete_one() {
    let keys = Keys::new("/w");
    let mut image = Image::default();
    image.apply(&keys, "/w/r/roles/a", Some(b"old".to_vec()));
    let g1 = parts_of(
        (1, 0),
        vec![("/w/r/roles/a".into(), Some(b"new".to_vec())), ("/w/r/roles/b".into(), Some(b"b".to_vec()))],
        1 << 20,
    );
    // Group 2 has two parts; only the first was written.
    let mut g2 = parts_of((1, 1), vec![("/w/r/roles/a".into(), None), ("/w/r/roles/c".into(), Some(vec![0; 64]))], 40);
    assert_eq!(g2.len(), 2);
    g2.pop();
    for (n, p) in g1.iter().chain(g2.iter()).enumerate() {
        image.apply(&keys, &keys.log_entry(n as u64), Some(p.encode()));
    }
    let r = replay(&keys, &mut image).unwrap();
    assert_eq!(r.groups.len(), 1);
    assert_eq!(r.last_entry, Some(1));
    assert_eq!(image.records.get("roles/a").map(Vec::as_slice), Some(&b"new"[..]));
    assert!(image.records.contains_key("roles/b"));
    assert!(!image.records.contains_key("roles/c"));
}

#[test]
fn prefix_end_is_the_next_key() {
    assert_eq!(prefix_end("/w/r/"), b"/w/r0".to_vec());
}

//! Crash consistency of hard links: a SIGKILL of the daemon at each kill
//! point of link, unlink and rename of a file with several names. A test
//! binary of its own, so it never runs beside the random crash harness in
//! tests/crash.rs (both kill daemons and time their kills; on two cores
//! the two at once starve each other's timing).

mod common;

use common::*;
use std::fs;
use std::path::Path;

/// The names that reach the test file after a kill (of `candidates`), each
/// with its exact content; nlink matches their number.
fn linked_names_intact(fx: &Fixture, candidates: &[&str], want: &[u8], what: &str) -> usize {
    let mut found = Vec::new();
    for n in candidates {
        match fs::read(fx.p(n)) {
            Ok(b) => {
                assert_eq!(b, want, "{what}: {n} has other content");
                found.push(*n);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => panic!("{what}: {n} does not open: {e}\n{}", fx.log()),
        }
    }
    assert!(!found.is_empty(), "{what}: the file is gone");
    let nl = std::os::unix::fs::MetadataExt::nlink(&fs::metadata(fx.p(found[0])).unwrap()) as usize;
    assert_eq!(nl, found.len(), "{what}: nlink {nl}, names {found:?}");
    found.len()
}

/// A SIGKILL at each step of link, unlink and rename of a file with
/// several names (kill points in volume/namespace.rs, see
/// `sealfs::keyring::kill_point`) leaves the old or the new state: every
/// name there opens with the file's content, nlink is exact, fsck finds
/// nothing, and the file takes further links.
#[test]
fn sigkill_at_each_hard_link_step_leaves_the_old_or_the_new_state() {
    let content = Rng::new(11).bytes(9000);
    // (kill point, operation, names before, names that may exist after)
    type Op = fn(&Path);
    let cases: &[(&str, Op, &[&str])] = &[
        (
            "link-table-stored",
            |m| drop(fs::hard_link(m.join("a"), m.join("d/new"))),
            &["a"],
        ),
        (
            "link-made",
            |m| drop(fs::hard_link(m.join("a"), m.join("d/new"))),
            &["a"],
        ),
        (
            "link-table-stored",
            |m| drop(fs::hard_link(m.join("a"), m.join("d/new"))),
            &["a", "b"],
        ),
        (
            "link-made",
            |m| drop(fs::hard_link(m.join("a"), m.join("d/new"))),
            &["a", "b"],
        ),
        (
            "unlink-linked-removed",
            |m| drop(fs::remove_file(m.join("b"))),
            &["a", "b"],
        ),
        (
            "rename-file-rebound",
            |m| drop(fs::rename(m.join("b"), m.join("d/new"))),
            &["a", "b"],
        ),
        (
            "rename-file-moved",
            |m| drop(fs::rename(m.join("b"), m.join("d/new"))),
            &["a", "b"],
        ),
        (
            "rename-file-rebound",
            |m| drop(fs::rename(m.join("a"), m.join("d/new"))),
            &["a"],
        ),
        (
            "rename-file-moved",
            |m| drop(fs::rename(m.join("a"), m.join("d/new"))),
            &["a"],
        ),
    ];
    for (point, op, before) in cases {
        let what = format!("{point} with names {before:?}");
        let mut fx = Fixture::mounted();
        fs::create_dir(fx.p("d")).unwrap();
        fs::write(fx.p("a"), &content).unwrap();
        for n in &before[1..] {
            fs::hard_link(fx.p("a"), fx.p(n)).unwrap();
        }
        fx.unmount();
        fx.run_to_kill_point(point, &what, op);
        fx.assert_fsck_clean(&what);
        fx.mount();
        let n = linked_names_intact(&fx, &["a", "b", "d/new"], &content, &what);
        // The file goes on: one more name, then all but one go.
        fs::hard_link(
            fx.p(if fx.p("a").exists() { "a" } else { "d/new" }),
            fx.p("more"),
        )
        .unwrap_or_else(|e| panic!("{what}: link after the kill: {e}"));
        assert_eq!(
            linked_names_intact(&fx, &["a", "b", "d/new", "more"], &content, &what),
            n + 1
        );
        fx.remount();
        linked_names_intact(&fx, &["a", "b", "d/new", "more"], &content, &what);
        fx.unmount();
    }
}

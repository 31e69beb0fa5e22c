//! The library API ([`sealfs::Vault`]) and the programs in `examples/`,
//! cross-checked against a real mount: what a mount writes, the examples
//! and the library read; what they write, a mount reads back byte for byte.
//!
//! The example programs are run from `target/<profile>/examples/`, which a
//! plain `cargo test` builds before it runs the tests; to run this file
//! alone: `cargo build --examples && cargo test --test library`.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use sealfs::vault::EntryKind;
use sealfs::{UnlockSecret, Vault, VaultError, VolumeError};

/// The built example program `name`.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/library-HASH → target/<profile>/examples/NAME
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "example {name} is not built at {}; run `cargo build --examples` (a plain `cargo test` does)",
        p.display()
    );
    p
}

fn run_example(name: &str, args: &[&std::ffi::OsStr], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(example(name))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run example {name}: {e}"));
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        // A program that refuses early closes its stdin: that is its answer.
        if let Err(e) = w.write_all(data) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "feed stdin: {e}");
        }
    }
    child.wait_with_output().expect("wait for example")
}

#[track_caller]
fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn secret(fx: &Fixture) -> UnlockSecret {
    UnlockSecret::from_passfile(&fx.passfile).expect("passfile")
}

/// A 200-byte name: its encrypted form is longer than 255 bytes, so it is
/// stored under a hashed entry name plus a `.name` sidecar.
fn long_name() -> String {
    "L".repeat(200)
}

#[test]
fn examples_read_what_a_mount_wrote_and_a_mount_reads_what_they_wrote() {
    let mut fx = Fixture::mounted();
    let mut rng = Rng::new(7);
    // Crosses chunk (4 KiB) and metadata-group boundaries, ends mid-chunk.
    let big = rng.bytes(700 * 1024 + 123);
    fs::create_dir_all(fx.p("dir/sub")).unwrap();
    fs::write(fx.p("dir/sub/big.bin"), &big).unwrap();
    fs::write(fx.p("a.txt"), b"hello from the mount\n").unwrap();
    fs::write(fx.p(&long_name()), b"long name content").unwrap();

    let cipher = fx.cipher.as_os_str().to_owned();
    let passfile = fx.passfile.as_os_str().to_owned();
    let pass_args = |path: &str| -> Vec<std::ffi::OsString> {
        vec![
            cipher.clone(),
            path.into(),
            "--passfile".into(),
            passfile.clone(),
        ]
    };
    let refs = |v: &[std::ffi::OsString]| -> Vec<std::ffi::OsString> { v.to_vec() };

    // Read-only examples work beside the mount.
    let args = refs(&pass_args("dir/sub/big.bin"));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_os_str()).collect();
    let out = run_example("decrypt_file", &args, None);
    assert_ok(&out, "decrypt_file of a file written through the mount");
    assert!(
        out.stdout == big,
        "decrypt_file output differs from what the mount wrote ({} vs {} bytes)",
        out.stdout.len(),
        big.len()
    );

    let ln = long_name();
    let args = refs(&pass_args(&ln));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_os_str()).collect();
    let out = run_example("decrypt_file", &args, None);
    assert_ok(&out, "decrypt_file of a long-named file");
    assert_eq!(out.stdout, b"long name content");

    // A writable open refuses the mounted volume, and says why and what to do.
    let args = refs(&pass_args("from-stdin.txt"));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_os_str()).collect();
    let out = run_example("encrypt_stream", &args, Some(b"should not land"));
    assert!(
        !out.status.success(),
        "encrypt_stream wrote into a mounted volume"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another sealfs process") && err.contains("unmount it first"),
        "unclear error for a mounted volume: {err}"
    );
    assert!(!fx.p("from-stdin.txt").exists());

    // Offline: a new key version, then writes through the example.
    fx.unmount();
    let out = sealfs(&[
        "rotate".as_ref(),
        fx.cipher.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
    ]);
    assert_ok(&out, "sealfs rotate");
    // 2.5 MiB: more than the writer's buffer, not chunk-aligned.
    let streamed = rng.bytes(5 * 512 * 1024 + 77);
    let args = refs(&pass_args("new/deep/stream.bin"));
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_os_str()).collect();
    args.push("--parents".as_ref());
    let out = run_example("encrypt_stream", &args, Some(&streamed));
    assert_ok(&out, "encrypt_stream into an unmounted volume");
    // Replacing an existing file truncates it (its data key, wrapped
    // under v1, stays: rotation never touches existing headers).
    let args = refs(&pass_args("a.txt"));
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_os_str()).collect();
    let out = run_example("encrypt_stream", &args, Some(b"short"));
    assert_ok(&out, "encrypt_stream replacing a file");

    // key_versions: old files under v1, the new one under v2 (primary).
    let args = [
        fx.cipher.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
    ];
    let out = run_example("key_versions", &args, None);
    assert_ok(&out, "key_versions");
    let text = String::from_utf8(out.stdout).unwrap();
    let expected = format!(
        "v1 enabled, 3 files\n  {ln}\n  a.txt\n  dir/sub/big.bin\n\
         v2 enabled primary, 1 files\n  new/deep/stream.bin\n"
    );
    assert_eq!(text, expected, "key_versions output");

    // The mount reads what the example wrote.
    fx.mount();
    assert!(
        fs::read(fx.p("new/deep/stream.bin")).unwrap() == streamed,
        "mount reads different bytes than encrypt_stream wrote"
    );
    assert_eq!(fs::read(fx.p("a.txt")).unwrap(), b"short");
    assert_eq!(fs::read(fx.p("dir/sub/big.bin")).unwrap(), big);
    let mut names: Vec<String> = fs::read_dir(fx.p("new/deep"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["stream.bin"]);
    fx.unmount();
}

#[test]
fn examples_fail_clearly_on_a_wrong_secret_or_a_non_volume() {
    let fx = Fixture::new();
    let wrong = fx.scratch.join("wrong");
    fs::write(&wrong, "not the passphrase\n").unwrap();
    let out = run_example(
        "decrypt_file",
        &[
            fx.cipher.as_os_str(),
            "x".as_ref(),
            "--passfile".as_ref(),
            wrong.as_os_str(),
        ],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong passphrase"), "{err}");

    let empty = fx.scratch.join("empty");
    fs::create_dir(&empty).unwrap();
    let out = run_example(
        "key_versions",
        &[
            empty.as_os_str(),
            "--passfile".as_ref(),
            fx.passfile.as_os_str(),
        ],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a sealfs volume (no sealfs.toml)"),
        "{err}"
    );

    let out = run_example(
        "decrypt_file",
        &[
            fx.cipher.as_os_str(),
            "missing/file".as_ref(),
            "--passfile".as_ref(),
            fx.passfile.as_os_str(),
        ],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing: no such file or directory in the volume"),
        "{err}"
    );
}

#[test]
fn vault_api_round_trips_with_a_mount() {
    let mut fx = Fixture::new();
    {
        let v = Vault::open(&fx.cipher, &secret(&fx)).expect("open vault");
        v.create_dir_all(Path::new("docs/2026")).unwrap();
        v.create_dir_all(Path::new("docs/2026")).unwrap(); // idempotent
        v.write(Path::new("docs/2026/plan.txt"), b"offline plan")
            .unwrap();
        v.write(Path::new(&long_name()), b"long").unwrap();
        let mut w = v.create(Path::new("docs/log")).unwrap();
        for i in 0..1000 {
            writeln!(w, "line {i}").unwrap();
        }
        w.finish().unwrap();

        let root = v.list_dir(Path::new("")).unwrap();
        let names: Vec<_> = root
            .iter()
            .map(|e| (e.name.to_str().unwrap().to_string(), e.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("L".repeat(200), EntryKind::File),
                ("docs".into(), EntryKind::Dir)
            ]
        );
        let docs = v.list_dir(Path::new("/docs")).unwrap();
        assert_eq!(docs[1].name, "log");
        let log_len = (0..1000)
            .map(|i| format!("line {i}\n").len())
            .sum::<usize>() as u64;
        assert_eq!(docs[1].size, log_len);

        // Errors name the path and the problem.
        assert!(
            matches!(v.read(Path::new("docs/nope")), Err(VaultError::NotFound(p)) if p == Path::new("docs/nope"))
        );
        assert!(
            matches!(v.read(Path::new("nope/x")), Err(VaultError::NotFound(p)) if p == Path::new("nope"))
        );
        assert!(matches!(
            v.read(Path::new("docs")),
            Err(VaultError::NotAFile(_))
        ));
        assert!(matches!(
            v.list_dir(Path::new("docs/log")),
            Err(VaultError::NotADirectory(_))
        ));
        assert!(matches!(
            v.read(Path::new("../etc/passwd")),
            Err(VaultError::InvalidPath(_))
        ));
        assert!(matches!(
            v.create_dir(Path::new("docs")),
            Err(VaultError::AlreadyExists(_))
        ));

        // A second writable open is refused while the first holds the lock.
        let e = Vault::open(&fx.cipher, &secret(&fx)).unwrap_err();
        assert!(
            matches!(e, VaultError::Volume(VolumeError::InUse(_))),
            "{e}"
        );
    }

    fx.mount();
    assert_eq!(
        fs::read(fx.p("docs/2026/plan.txt")).unwrap(),
        b"offline plan"
    );
    assert_eq!(fs::read(fx.p(&long_name())).unwrap(), b"long");
    let log = fs::read_to_string(fx.p("docs/log")).unwrap();
    assert_eq!(log.lines().count(), 1000);
    assert_eq!(log.lines().last(), Some("line 999"));
    fs::write(fx.p("docs/from-mount"), b"mounted write").unwrap();

    // Beside the mount: read-only works (seeking too), writable is refused.
    {
        let v = Vault::open_read_only(&fx.cipher, &secret(&fx)).unwrap();
        assert_eq!(
            v.read(Path::new("docs/from-mount")).unwrap(),
            b"mounted write"
        );
        let mut r = v.open_file(Path::new("docs/log")).unwrap();
        r.seek(SeekFrom::End(-9)).unwrap();
        let mut tail = String::new();
        r.read_to_string(&mut tail).unwrap();
        assert_eq!(tail, "line 999\n");
        assert!(matches!(
            v.write(Path::new("x"), b"y"),
            Err(VaultError::Volume(VolumeError::ReadOnly))
        ));
        let e = Vault::open(&fx.cipher, &secret(&fx)).unwrap_err();
        assert!(
            matches!(e, VaultError::Volume(VolumeError::InUse(_))),
            "{e}"
        );
    }
    fx.unmount();

    // A wrong passphrase is reported as such.
    let wrong = UnlockSecret::from_passphrase_line(b"nope\n").unwrap();
    let e = Vault::open_read_only(&fx.cipher, &wrong).unwrap_err();
    assert!(e.is_wrong_secret(), "{e}");
    assert!(e.to_string().contains("wrong passphrase"), "{e}");
    assert!(!format!("{e:?}").contains(PASSPHRASE));
}

#[test]
fn vault_reads_fail_on_tampered_content_instead_of_returning_garbage() {
    let mut fx = Fixture::mounted();
    fs::write(fx.p("victim"), vec![b'v'; 3 * 4096]).unwrap();
    let backing = {
        let mut files = Vec::new();
        walk(&fx.cipher, &mut |p, md| {
            if md.is_file() && md.len() > 4096 * 2 {
                files.push(p.to_path_buf())
            }
        });
        assert_eq!(files.len(), 1, "{files:?}");
        files.pop().unwrap()
    };
    fx.unmount();
    // Flip one byte in the ciphertext of the second chunk (data starts after
    // the header/metadata block; the file is 3 chunks, so the last 4 KiB
    // before the end hold chunk 2).
    let mut bytes = fs::read(&backing).unwrap();
    let n = bytes.len();
    bytes[n - 4096 - 100] ^= 1;
    fs::write(&backing, &bytes).unwrap();

    let v = Vault::open_read_only(&fx.cipher, &secret(&fx)).unwrap();
    let e = v.read(Path::new("victim")).unwrap_err();
    assert!(
        matches!(&e, VaultError::Volume(ve) if ve.is_integrity()),
        "{e}"
    );
    let mut r = v.open_file(Path::new("victim")).unwrap();
    let mut buf = Vec::new();
    let io = r.read_to_end(&mut buf).unwrap_err();
    assert_eq!(io.kind(), std::io::ErrorKind::InvalidData, "{io}");
    assert!(buf.len() <= 4096, "bytes past the bad chunk were returned");
}

/// A library user manages keys as `sealfs ctl` does on a mount, through the
/// same rules (`KeyService`): rotate, rewrap, trim (refused while a header
/// still uses the version), schedule and cancel a deletion, disable and
/// enable, a rotation period; a mount then sees the result.
#[test]
fn vault_manages_keys_with_the_rules_of_the_control_socket() {
    use sealfs::format::keyring::KeyState;
    use sealfs::kms::KeyError;
    use sealfs::volume::walk::RewrapProgress;

    let mut fx = Fixture::new();
    {
        let vault = Vault::open(&fx.cipher, &secret(&fx)).unwrap();
        let mut w = vault.create("kept.txt".as_ref()).unwrap();
        w.write_all(b"still here\n").unwrap();
        w.finish().unwrap();

        assert_eq!(vault.rotate().unwrap(), 2);
        let e = vault.trim(2, false).unwrap_err();
        assert!(
            matches!(&e, KeyError::Invalid(m) if m.contains("headers still use versions below 2")),
            "{e}"
        );
        let e = vault.trim(3, false).unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot retire the primary version 2"),
            "{e}"
        );
        let r = vault.rewrap(&RewrapProgress::default()).unwrap();
        assert_eq!(r.failed, 0, "{r:?}");
        let t = vault.trim(2, false).unwrap();
        assert_eq!(t.retired, [1]);
        assert_eq!(vault.census().unwrap().files.get(&2), Some(&1));

        let e = vault.schedule_deletion(2, None, true).unwrap_err();
        assert!(e.to_string().contains("must be retired"), "{e}");
        let dry = vault.schedule_deletion(1, Some("1d"), false).unwrap();
        assert_eq!(
            (dry.would_orphan, dry.confirmed, dry.deletion_due),
            (0, false, None)
        );
        let plan = vault.schedule_deletion(1, Some("1d"), true).unwrap();
        assert!(plan.confirmed && plan.deletion_due.is_some());
        let status = vault.key_status();
        assert_eq!(status.versions[0].state, KeyState::PendingDeletion);
        assert_eq!(status.versions[0].deletion_due, plan.deletion_due);
        // Not due yet: the schedule leaves it alone.
        assert!(vault
            .run_schedules(plan.deletion_due.unwrap() - 1)
            .unwrap()
            .is_empty());
        vault.cancel_deletion(1).unwrap();
        vault.untrim(1).unwrap();
        assert_eq!(vault.key_status().versions[0].state, KeyState::Enabled);

        let s = vault.set_rotation_period(Some("90d")).unwrap();
        assert_eq!(s.rotation_period.as_deref(), Some("90d"));
        assert!(s.next_rotation.is_some());
        assert!(matches!(
            vault.set_rotation_period(Some("soon")),
            Err(KeyError::Invalid(_))
        ));

        vault.disable().unwrap();
        assert!(vault.key_status().disabled);
        assert!(matches!(
            vault.read("kept.txt".as_ref()),
            Err(VaultError::Disabled)
        ));
        vault.enable().unwrap();
        assert_eq!(vault.read("kept.txt".as_ref()).unwrap(), b"still here\n");
    }
    // What the library did is what a mount finds.
    fx.mount();
    assert_eq!(fs::read(fx.p("kept.txt")).unwrap(), b"still here\n");
    fx.unmount();
    let vault = Vault::open_read_only(&fx.cipher, &secret(&fx)).unwrap();
    let st = vault.key_status();
    assert_eq!(st.primary, 2);
    assert_eq!(st.rotation_period.as_deref(), Some("90d"));
}

/// `examples/mount_and_rotate` mounts with `Mount::builder()`, writes,
/// rotates through the control socket, reads back and unmounts: afterwards
/// nothing is mounted, no socket is left, version 2 is primary, and a
/// remount reads both files, each under the version it was written with.
#[test]
fn mount_and_rotate_example_mounts_rotates_and_unmounts() {
    let mut fx = Fixture::new();
    let out = run_example(
        "mount_and_rotate",
        &[
            fx.cipher.as_os_str(),
            fx.mnt.as_os_str(),
            "--passfile".as_ref(),
            fx.passfile.as_os_str(),
            "--ctl-socket".as_ref(),
            fx.ctl_socket.as_os_str(),
        ],
        None,
    );
    assert_ok(&out, "mount_and_rotate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "wrote before-rotation.txt",
        "key version 2 is now primary",
        "read back ",
        "primary key version 2 of 2",
        "unmounted",
    ] {
        assert!(stdout.contains(line), "no '{line}' in:\n{stdout}");
    }
    assert!(!is_mounted(&fx.mnt), "the example left its mount behind");
    assert!(
        !fx.ctl_socket.exists(),
        "the example left its socket behind"
    );
    assert!(
        sealfs_pids_mentioning(&fx.cipher).is_empty(),
        "a sealfs process still runs"
    );

    let vault = Vault::open_read_only(&fx.cipher, &secret(&fx)).unwrap();
    assert_eq!(vault.key_status().primary, 2);
    let by_version = vault.files_by_key_version().unwrap();
    assert_eq!(
        by_version.get(&Some(1)).map(Vec::as_slice),
        Some(&[PathBuf::from("before-rotation.txt")][..]),
        "{by_version:?}"
    );
    assert_eq!(
        by_version.get(&Some(2)).map(Vec::as_slice),
        Some(&[PathBuf::from("after-rotation.txt")][..]),
        "{by_version:?}"
    );
    drop(vault);

    fx.mount();
    assert_eq!(
        fs::read(fx.p("before-rotation.txt")).unwrap(),
        b"written under the first key version\n"
    );
    assert_eq!(
        fs::read(fx.p("after-rotation.txt")).unwrap(),
        b"written under the new key version\n"
    );
    fx.unmount();
}

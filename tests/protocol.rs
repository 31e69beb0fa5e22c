//! The control protocol's types (`sealfs::ctl::protocol`), without a mount:
//! every request and every result survives a trip through serde; lines
//! pasted in docs/CONTROL.md still parse into them (and, where the docs show
//! a whole line, come out byte for byte the same); and each result type
//! that mirrors a library type serializes exactly as the type it mirrors,
//! so the wire did not change when the results became typed.

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use sealfs::ctl::protocol::*;
use sealfs::format::audit::{AuditRecord, ChainBreak, ChainReport, Principal};
use sealfs::volume::fsck::{ByteRange, FsckReport, FsckStats, Problem, ProblemKind, Repair};
use sealfs::volume::walk::{Census, RewrapReport};

const CONTROL_MD: &str = include_str!("../docs/CONTROL.md");

#[track_caller]
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(t: &T) {
    let v = serde_json::to_value(t).expect("serializes");
    let back: T = serde_json::from_value(v.clone()).expect("deserializes");
    assert_eq!(&back, t, "through {v}");
    let text = serde_json::to_string(t).unwrap();
    let back: T = serde_json::from_str(&text).unwrap();
    assert_eq!(&back, t, "through {text}");
}

fn every_op() -> Vec<Op> {
    vec![
        Op::Status,
        Op::Rotate,
        Op::Rewrap,
        Op::Census,
        Op::Fsck,
        Op::Metrics,
        Op::Disable,
        Op::Enable,
        Op::SetRotationPeriod {
            period: Some("90d".into()),
            allow_short: false,
        },
        Op::SetRotationPeriod {
            period: Some("1h".into()),
            allow_short: true,
        },
        Op::SetRotationPeriod {
            period: None,
            allow_short: false,
        },
        Op::Trim {
            min_version: 3,
            force: true,
        },
        Op::Untrim { version: 2 },
        Op::ScheduleDeletion {
            version: 2,
            wait: Some("1d".into()),
            confirm: true,
        },
        Op::ScheduleDeletion {
            version: 2,
            wait: None,
            confirm: false,
        },
        Op::CancelDeletion { version: 2 },
        Op::GrantCreate {
            grantee: "uid:1001".into(),
            ops: vec!["read".into(), "list".into()],
            path_prefix: "/projects/x".into(),
            expires: Some("7d".into()),
            name: Some("alice".into()),
        },
        Op::GrantList {
            grantee: None,
            path_prefix: Some("/projects".into()),
        },
        Op::GrantRetire {
            token: GrantToken("sgt_00".into()),
        },
        Op::GrantRevoke {
            grant_id: "g-39c2365fbe89120b".into(),
        },
        Op::AuditExport {
            since: Some("1h".into()),
            until: None,
            principal: Some("uid:1001".into()),
            path_prefix: None,
            operation: Some("decrypt".into()),
        },
        Op::AuditVerify,
        Op::KeyCreate {
            alias: "finance".into(),
            description: "ledgers".into(),
            rotation_period: Some("90d".into()),
            material: None,
            expires: None,
        },
        Op::KeyCreate {
            alias: "hr".into(),
            description: String::new(),
            rotation_period: None,
            material: Some(KeyMaterial("11".repeat(32))),
            expires: Some("30d".into()),
        },
        Op::KeyList,
        Op::KeyAliasAdd {
            alias: "ledgers".into(),
        },
        Op::KeyAliasRemove {
            alias: "ledgers".into(),
        },
        Op::KeyAssign {
            path: "/finance".into(),
        },
        Op::KeyUnassign {
            path: "/finance".into(),
        },
        Op::RewrapPath {
            path: "/finance".into(),
        },
        Op::KeyPolicyGet,
        Op::KeyPolicySet {
            policy: Some(r#"{"version":1,"statements":[]}"#.into()),
        },
        Op::KeyPolicySet { policy: None },
        Op::AuditPrune {
            before: Some("400d".into()),
            max_bytes: None,
        },
        Op::AuditPrune {
            before: None,
            max_bytes: Some(1 << 30),
        },
        Op::AuditRetention {
            max_age: Some("400d".into()),
            max_bytes: Some(1 << 30),
            allow_short: false,
        },
        Op::AuditRetention {
            max_age: None,
            max_bytes: None,
            allow_short: true,
        },
    ]
}

#[test]
fn every_request_round_trips_through_its_line_and_serde() {
    let ops = every_op();
    // Every variant is listed above: this match stops compiling when one
    // is added, and the count catches one missing from the list.
    let variant = |op: &Op| match op {
        Op::Status => 0,
        Op::Rotate => 1,
        Op::Rewrap => 2,
        Op::Census => 3,
        Op::Fsck => 4,
        Op::Metrics => 5,
        Op::Disable => 6,
        Op::Enable => 7,
        Op::SetRotationPeriod { .. } => 8,
        Op::Trim { .. } => 9,
        Op::Untrim { .. } => 10,
        Op::ScheduleDeletion { .. } => 11,
        Op::CancelDeletion { .. } => 12,
        Op::GrantCreate { .. } => 13,
        Op::GrantList { .. } => 14,
        Op::GrantRetire { .. } => 15,
        Op::GrantRevoke { .. } => 16,
        Op::AuditExport { .. } => 17,
        Op::AuditVerify => 18,
        Op::KeyCreate { .. } => 19,
        Op::KeyList => 20,
        Op::KeyAliasAdd { .. } => 21,
        Op::KeyAliasRemove { .. } => 22,
        Op::KeyAssign { .. } => 23,
        Op::KeyUnassign { .. } => 24,
        Op::RewrapPath { .. } => 25,
        Op::KeyPolicyGet => 26,
        Op::KeyPolicySet { .. } => 27,
        Op::AuditPrune { .. } => 28,
        Op::AuditRetention { .. } => 29,
    };
    let seen: std::collections::BTreeSet<i32> = ops.iter().map(variant).collect();
    assert_eq!(seen.len(), 30);
    for (i, op) in ops.into_iter().enumerate() {
        // Every other request names a key (alias or id), as `--key` does.
        let key = match i % 3 {
            0 => None,
            1 => Some("finance".to_string()),
            _ => Some("2".to_string()),
        };
        let req = Request {
            id: json!(i),
            op,
            key,
        };
        let line = req.to_line();
        assert!(!line.contains('\n'));
        assert_eq!(parse_request(line.as_bytes()).unwrap(), req, "{line}");
        let back: Request = serde_json::from_str(&line).unwrap();
        assert_eq!(back, req);
        round_trip(&req);
    }
    // What `sealfs ctl` sends: version 1, id 1.
    let line = Request::new(Op::Rotate).to_line();
    assert_eq!(line, r#"{"id":1,"op":"rotate","v":1}"#);
    let line = Request::new(Op::Rotate)
        .with_key(Some("finance".into()))
        .to_line();
    assert_eq!(line, r#"{"id":1,"key":"finance","op":"rotate","v":1}"#);
    // A numeric key is an id; anything else is refused.
    let r = parse_request(br#"{"v":1,"op":"rotate","key":2}"#).unwrap();
    assert_eq!(r.key.as_deref(), Some("2"));
    assert_eq!(
        parse_request(br#"{"v":1,"op":"rotate","key":[1]}"#)
            .unwrap_err()
            .code,
        ErrorCode::BadRequest
    );
    // Imported key material never shows in Debug.
    let m = KeyMaterial("ab".repeat(32));
    assert!(!format!("{m:?}").contains("abab"));
    // A request that parse_request refuses does not deserialize either.
    assert!(serde_json::from_str::<Request>(r#"{"v":2,"op":"status"}"#).is_err());
}

fn sample_record() -> AuditRecord {
    AuditRecord {
        seq: 11,
        time_ms: 1_795_386_823_125,
        principal: Principal {
            uid: 1001,
            gid: 1001,
            pid: 28660,
            comm: Some("cat".into()),
        },
        op: "decrypt".into(),
        key_version: Some(1),
        path: Some("/projects/x/f".into()),
        grant: Some("g-2863890d0774f5cd".into()),
        outcome: "ok".into(),
        error: None,
        detail: None,
        keyring_generation: None,
        count: None,
        first_ms: None,
        last_ms: None,
    }
}

fn sample_verify() -> VerifyResult {
    VerifyResult {
        segments: 2,
        records: 30,
        last_seq: 30,
        torn_tail_bytes: 7,
        first_break: Some(ChainBreakInfo {
            segment: 2,
            offset: 4096,
            expected_seq: 31,
            reason: "bad MAC".into(),
            resumed_seq: Some(32),
            host: None,
        }),
        breaks: vec![ChainBreakInfo {
            segment: 2,
            offset: 4096,
            expected_seq: 31,
            reason: "bad MAC".into(),
            resumed_seq: Some(32),
            host: Some("node-b".into()),
        }],
        pruned: Some(sealfs::format::audit::PrunedInfo {
            through_segment: 3,
            through_seq: 12,
            records_pruned: 12,
            last_record_ms: 1_796_000_000_000,
            pruned_ms: 1_796_000_100_000,
            leftover_segments: 0,
        }),
        streams: vec![sealfs::ctl::protocol::StreamVerifyInfo {
            host: Some("node-b".into()),
            segments: 1,
            records: 30,
            last_seq: 30,
            breaks: 1,
        }],
    }
}

fn sample_grant() -> GrantInfo {
    GrantInfo {
        grant_id: "g-39c2365fbe89120b".into(),
        name: Some("alice".into()),
        grantee: "uid:1001".into(),
        ops: vec!["read".into(), "list".into()],
        path_prefix: "/projects/x".into(),
        created: "2026-11-22T22:36:45Z".into(),
        expires: None,
        created_by: 0,
        key: None,
    }
}

fn sample_census() -> CensusResult {
    CensusResult {
        files: BTreeMap::from([(2, 4), (10, 1)]),
        dirs: BTreeMap::from([(2, 2)]),
        unreadable: 1,
        unreadable_by_version: BTreeMap::from([(1, 1)]),
        scanned_at: 1_795_335_837,
    }
}

#[test]
fn every_result_round_trips_through_serde() {
    let rewrap = RewrapStatus {
        running: true,
        total: 1507,
        done: 939,
        rewrapped: 939,
        failed: 0,
    };
    round_trip(&StatusResult {
        volume_id: "fe6a61d7bac7c601662b002227e6126b".into(),
        format_version: 1,
        cipherdir: "/tmp/demo/vault.enc".into(),
        mountpoint: "/tmp/demo/vault".into(),
        read_only: false,
        disabled: true,
        primary: 2,
        versions: vec![
            VersionStatus {
                version: 1,
                state: VersionState::PendingDeletion,
                created: 1_795_335_831,
                primary: false,
                deletion_due: Some(1_795_940_637),
                files: Some(0),
                dirs: Some(0),
            },
            VersionStatus {
                version: 2,
                state: VersionState::Enabled,
                created: 1_795_335_836,
                primary: true,
                deletion_due: None,
                files: None,
                dirs: None,
            },
        ],
        rotation_period: Some("90d".into()),
        next_rotation: Some(1_803_111_836),
        rewrap,
        census: Some(sample_census()),
        grants: Some(3),
        audit: Some(AuditPosition {
            segment: 2,
            records: 30,
            key_version: 2,
            bytes: 9000,
            segments: 1,
            pruned_through: Some(12),
            records_pruned: 12,
            headroom: 1 << 30,
            retention: Some(RetentionResult {
                max_age: Some("400d".into()),
                max_bytes: None,
            }),
            host: Some("node-a".into()),
        }),
        keyring: KeyringStatus {
            layout: 2,
            generation: 12,
            unlocked_by: Some(UnlockedSlot {
                slot: Some(2),
                provider: "transit".into(),
                label: "kms".into(),
                description: "transit http://127.0.0.1:8200 transit/keys/vault v1".into(),
            }),
            keyslots: vec![KeyslotStatus {
                id: 2,
                provider: "transit".into(),
                label: "kms".into(),
                created: 1_795_335_831,
                description: "transit http://127.0.0.1:8200 transit/keys/vault v1".into(),
            }],
            kms: Some(KmsStatus {
                provider: "transit".into(),
                slot: 2,
                target: "http://127.0.0.1:8200 transit/keys/vault".into(),
                state: "key_disabled".into(),
                message: Some("Transit key \"vault\" is disabled".into()),
                checked_at: 1_795_335_900,
            }),
        },
        space: Some(SpaceStatus {
            free: 1 << 30,
            margin: 96 << 20,
            write_through: false,
        }),
        keys: vec![KeyEntry {
            id: 2,
            aliases: vec!["finance".into()],
            description: String::new(),
            state: "enabled".into(),
            origin: "external".into(),
            default: false,
            created: 1_795_000_000,
            primary: 3,
            rotation_period: None,
            next_rotation: None,
            expires: Some(1_796_000_000),
            deletion_due: None,
            versions: Vec::new(),
        }],
    });
    round_trip(&rewrap);
    round_trip(&sample_census());
    round_trip(&RotateResult { primary: 2 });
    round_trip(&RewrapStarted {
        started: true,
        primary: 5,
    });
    round_trip(&MetricsResult {
        text: "sealfs_key_disabled 0\n".into(),
    });
    round_trip(&DisabledResult { disabled: true });
    round_trip(&RotationPeriodResult {
        rotation_period: None,
        next_rotation: None,
    });
    round_trip(&TrimResult {
        retired: vec![1, 2],
        directory_records_rewrapped: 3,
        headers_left_unreadable: 0,
    });
    round_trip(&UntrimResult { enabled: 1 });
    round_trip(&ScheduleDeletionResult {
        version: 1,
        would_orphan: 4,
        deletion_due: Some(1_795_940_637),
        confirmed: true,
    });
    round_trip(&ScheduleDeletionResult {
        version: 1,
        would_orphan: 4,
        deletion_due: None,
        confirmed: false,
    });
    round_trip(&CancelDeletionResult {
        version: 1,
        state: VersionState::Retired,
    });
    round_trip(&sample_grant());
    round_trip(&GrantCreated {
        grant: sample_grant(),
        grant_token: "sgt_9ef1".into(),
    });
    round_trip(&GrantList {
        grants: vec![sample_grant()],
    });
    round_trip(&GrantRetired {
        retired: "g-1".into(),
    });
    round_trip(&GrantRevoked {
        revoked: "g-1".into(),
    });
    round_trip(&sample_verify());
    round_trip(&ExportSummary {
        exported: 2,
        verify: sample_verify(),
    });
    round_trip(&ExportedLine {
        record: ExportedRecord::from(&sample_record()),
    });
    round_trip(&FsckResult::from(&sample_fsck()));
    round_trip(&WireError {
        code: "busy".into(),
        message: "a rewrap is already running".into(),
    });
    for code in ErrorCode::ALL {
        round_trip(&code);
        assert_eq!(
            serde_json::to_value(code).unwrap(),
            json!(code.as_str()),
            "{code:?}"
        );
        assert_eq!(ErrorCode::from_wire(code.as_str()), Some(code));
    }
    for state in [
        VersionState::Enabled,
        VersionState::Retired,
        VersionState::PendingDeletion,
        VersionState::Destroyed,
    ] {
        round_trip(&state);
        assert_eq!(serde_json::to_value(state).unwrap(), json!(state.as_str()));
    }
    let ok = ok_line(&json!(3), json!({"primary": 2}));
    let back: Response = serde_json::from_str(&ok).unwrap();
    round_trip(&back);
    assert_eq!(back.to_line(), ok);
    let err = error_line(&Value::Null, ErrorCode::Busy, "x");
    let back: Response = serde_json::from_str(&err).unwrap();
    round_trip(&back);
    assert_eq!(back.to_line(), err);
    round_trip(&Line::Response(back));
}

/// Parses `line` (a line the daemon sent, pasted in docs/CONTROL.md) as a
/// response whose result is an `R`, checks that the docs really show it,
/// and with `exact` that the typed result writes the same line again.
#[track_caller]
fn doc_response<R: Serialize + DeserializeOwned + Debug>(line: &str, exact: bool) -> R {
    assert!(CONTROL_MD.contains(line), "not in docs/CONTROL.md: {line}");
    let Line::Response(r) = serde_json::from_str::<Line>(line).expect(line) else {
        panic!("not a response: {line}");
    };
    assert!(r.ok, "{line}");
    let result: R = serde_json::from_value(r.result.clone().unwrap()).expect(line);
    if exact {
        let again = ok_line(&r.id, serde_json::to_value(&result).unwrap());
        assert_eq!(again, line);
    }
    result
}

#[test]
fn lines_from_control_md_still_parse() {
    for req in [
        r#"{"v": 1, "id": 7, "op": "trim", "min_version": 3}"#,
        r#"{"v":1,"id":28,"op":"status","client":"my-tool 2.0"}"#,
        r#"{"v":1,"id":1,"op":"grant_create","grantee":"uid:1001","ops":["read","list"],"path_prefix":"/projects/x","expires":"2026-12-31T00:00Z","name":"alice"}"#,
        r#"{"v":1,"id":6,"op":"audit_export","principal":"uid:1001","operation":"decrypt","since":"1h"}"#,
        r#"{"v":1,"id":14,"op":"schedule_deletion","version":1,"wait":"7d","confirm":true}"#,
        r#"{"v":1,"id":9,"op":"set_rotation_period","period":null}"#,
    ] {
        assert!(CONTROL_MD.contains(req), "not in docs/CONTROL.md: {req}");
        let r = parse_request(req.as_bytes()).expect(req);
        let back: Request = serde_json::from_str(&r.to_line()).unwrap();
        assert_eq!(back, r);
    }

    let s: StatusResult = doc_response(
        r#"{"id":1,"ok":true,"result":{"census":null,"cipherdir":"/tmp/demo/vault.enc","disabled":false,"format_version":1,"mountpoint":"/tmp/demo/vault","next_rotation":null,"primary":1,"read_only":false,"rewrap":{"done":0,"failed":0,"rewrapped":0,"running":false,"total":0},"rotation_period":null,"versions":[{"created":1795335831,"primary":true,"state":"enabled","version":1}],"volume_id":"fe6a61d7bac7c601662b002227e6126b"},"v":1}"#,
        false, // the docs predate the `grants` and `audit` fields
    );
    assert_eq!((s.primary, s.versions[0].state), (1, VersionState::Enabled));
    let r: RotateResult = doc_response(r#"{"id":2,"ok":true,"result":{"primary":2},"v":1}"#, true);
    assert_eq!(r.primary, 2);
    let _: RewrapStarted = doc_response(
        r#"{"id":30,"ok":true,"result":{"primary":5,"started":true},"v":1}"#,
        true,
    );
    let c: CensusResult = doc_response(
        r#"{"id":3,"ok":true,"result":{"dirs":{"1":2},"files":{"1":4},"scanned_at":1795335836,"unreadable":0,"unreadable_by_version":{}},"v":1}"#,
        true,
    );
    assert_eq!(c.files.get(&1), Some(&4));
    let f: FsckResult = doc_response(
        r#"{"id":9,"ok":true,"result":{"problems":[{"action":null,"backing":"rV2…/u8Q…","kind":"chunk","message":"1 chunk(s) fail authentication: bytes 4096..8192 (chunks 1-1)","path":"/d/victim","ranges":[{"end":8192,"first_chunk":1,"last_chunk":1,"start":4096}],"repair":"not-attempted"}],"salvage":false,"stats":{"bytes":192288,"chunks":50,"directories":2,"files":5,"other":0,"symlinks":0}},"v":1}"#,
        true,
    );
    assert_eq!(f.problems[0].ranges[0].end, 8192);
    let _: DisabledResult = doc_response(
        r#"{"id":6,"ok":true,"result":{"disabled":true},"v":1}"#,
        true,
    );
    let p: RotationPeriodResult = doc_response(
        r#"{"id":8,"ok":true,"result":{"next_rotation":1803111836,"rotation_period":"90d"},"v":1}"#,
        true,
    );
    assert_eq!(p.rotation_period.as_deref(), Some("90d"));
    let _: RotationPeriodResult = doc_response(
        r#"{"id":9,"ok":true,"result":{"next_rotation":null,"rotation_period":null},"v":1}"#,
        true,
    );
    let _: TrimResult = doc_response(
        r#"{"id":2,"ok":true,"result":{"directory_records_rewrapped":0,"headers_left_unreadable":0,"retired":[]},"v":1}"#,
        true,
    );
    let _: UntrimResult = doc_response(r#"{"id":11,"ok":true,"result":{"enabled":1},"v":1}"#, true);
    let d: ScheduleDeletionResult = doc_response(
        r#"{"id":13,"ok":true,"result":{"confirmed":false,"version":1,"would_orphan":0},"v":1}"#,
        true,
    );
    assert_eq!(d.deletion_due, None);
    let d: ScheduleDeletionResult = doc_response(
        r#"{"id":14,"ok":true,"result":{"confirmed":true,"deletion_due":1795940637,"version":1,"would_orphan":0},"v":1}"#,
        true,
    );
    assert_eq!(d.deletion_due, Some(1_795_940_637));
    let _: CancelDeletionResult = doc_response(
        r#"{"id":16,"ok":true,"result":{"state":"retired","version":1},"v":1}"#,
        true,
    );
    let g: GrantCreated = doc_response(
        r#"{"id":1,"ok":true,"result":{"created":"2026-11-22T22:36:45Z","created_by":0,"expires":"2026-12-31T00:00:00Z","grant_id":"g-39c2365fbe89120b","grant_token":"sgt_9ef1c7a8787539ce935e9b6c0bf29158f2b18efe93fdfc153517eb106a2abd81","grantee":"uid:1001","name":"alice","ops":["read","list"],"path_prefix":"/projects/x"},"v":1}"#,
        true,
    );
    assert_eq!(g.grant.ops, ["read", "list"]);
    let _: GrantList = doc_response(
        r#"{"id":2,"ok":true,"result":{"grants":[{"created":"2026-11-22T22:36:45Z","created_by":0,"expires":"2026-12-31T00:00:00Z","grant_id":"g-39c2365fbe89120b","grantee":"uid:1001","name":"alice","ops":["read","list"],"path_prefix":"/projects/x"}]},"v":1}"#,
        true,
    );
    let _: VerifyResult = doc_response(
        r#"{"id":5,"ok":true,"result":{"breaks":[],"first_break":null,"last_seq":30,"records":30,"segments":1,"torn_tail_bytes":0},"v":1}"#,
        true,
    );
    let e: ExportSummary = doc_response(
        r#"{"id":6,"ok":true,"result":{"exported":2,"verify":{"breaks":[],"first_break":null,"last_seq":30,"records":30,"segments":1,"torn_tail_bytes":0}},"v":1}"#,
        true,
    );
    assert_eq!(e.exported, 2);
    let v: VerifyResult = doc_response(
        r#"{"id":5,"ok":true,"result":{"breaks":[{"expected_seq":12,"offset":3301,"reason":"record MAC does not verify (edited, removed or reordered)","resumed_seq":13,"segment":1}],"first_break":{"expected_seq":12,"offset":3301,"reason":"record MAC does not verify (edited, removed or reordered)","resumed_seq":13,"segment":1},"last_seq":30,"records":29,"segments":1,"torn_tail_bytes":0},"v":1}"#,
        true,
    );
    assert_eq!(v.breaks[0].resumed_seq, Some(13));
    let brk = r#"{"break":{"expected_seq":12,"offset":3301,"reason":"record MAC does not verify (edited, removed or reordered)","resumed_seq":13,"segment":1}}"#;
    assert!(CONTROL_MD.contains(brk));
    match serde_json::from_str::<Line>(brk).unwrap() {
        Line::Break(b) => assert_eq!(b.brk.expected_seq, 12),
        other => panic!("{other:?}"),
    }

    let rec = r#"{"record":{"grant":"g-2863890d0774f5cd","key_version":1,"op":"decrypt","outcome":"ok","path":"/projects/x/f","principal":{"comm":"cat","gid":1001,"pid":28660,"uid":1001},"seq":11,"time":"2026-11-22T22:33:43.125Z","time_ms":1795386823125}}"#;
    assert!(CONTROL_MD.contains(rec));
    let Line::Record(l) = serde_json::from_str::<Line>(rec).unwrap() else {
        panic!("a record line parsed as a response");
    };
    assert_eq!(l.record.record, sample_record());
    assert_eq!(serde_json::to_value(&l).unwrap().to_string(), rec);
    // The time text is the daemon's own rendering of time_ms.
    assert_eq!(ExportedRecord::from(&sample_record()), l.record);

    for line in [
        r#"{"error":{"code":"busy","message":"a rewrap is already running"},"id":31,"ok":false,"v":1}"#,
        r#"{"error":{"code":"bad_request","message":"a request is a JSON object"},"id":null,"ok":false,"v":1}"#,
        r#"{"error":{"code":"not_found","message":"no live grant g-nope"},"id":4,"ok":false,"v":1}"#,
    ] {
        assert!(CONTROL_MD.contains(line), "{line}");
        let Line::Response(r) = serde_json::from_str::<Line>(line).unwrap() else {
            panic!("{line}");
        };
        let e = r.error.as_ref().unwrap();
        let code = ErrorCode::from_wire(&e.code).unwrap();
        assert_eq!(error_line(&r.id, code, &e.message), line);
    }
}

fn sample_fsck() -> FsckReport {
    FsckReport {
        problems: vec![
            Problem {
                kind: ProblemKind::Chunk,
                path: Some("/d/victim".into()),
                backing: "rV2/u8Q".into(),
                message: "1 chunk(s) fail authentication".into(),
                ranges: vec![ByteRange {
                    first_chunk: 1,
                    last_chunk: 1,
                    start: 4096,
                    end: 8192,
                }],
                repair: Repair::NotAttempted,
                action: None,
            },
            Problem {
                kind: ProblemKind::StraySidecar,
                path: None,
                backing: "x.name".into(),
                message: "a sidecar without its entry".into(),
                ranges: vec![],
                repair: Repair::Repaired,
                action: Some("removed".into()),
            },
        ],
        stats: FsckStats {
            directories: 2,
            files: 5,
            symlinks: 1,
            other: 0,
            chunks: 50,
            bytes: 192_288,
        },
        salvage: true,
    }
}

/// A result type that mirrors a library type writes what the library type
/// writes (what the daemon sent before its results were typed).
#[test]
fn mirrored_results_serialize_as_the_library_types() {
    let fsck = sample_fsck();
    assert_eq!(
        serde_json::to_value(FsckResult::from(&fsck)).unwrap(),
        serde_json::to_value(&fsck).unwrap()
    );
    let census = Census {
        files: BTreeMap::from([(2, 4), (10, 1)]),
        dirs: BTreeMap::from([(2, 2)]),
        unreadable: 1,
        unreadable_by_version: BTreeMap::from([(1, 1)]),
        scanned_at: 1_795_335_837,
    };
    assert_eq!(
        serde_json::to_value(CensusResult::from(&census)).unwrap(),
        serde_json::to_value(&census).unwrap()
    );
    let rewrap = RewrapReport {
        running: false,
        total: 6,
        done: 6,
        rewrapped: 5,
        failed: 1,
    };
    assert_eq!(
        serde_json::to_value(RewrapStatus::from(rewrap.clone())).unwrap(),
        serde_json::to_value(&rewrap).unwrap()
    );
    for breaks in [
        vec![],
        vec![
            ChainBreak {
                segment: 2,
                offset: 4096,
                expected_seq: 31,
                reason: "bad MAC".into(),
                resumed_seq: Some(33),
            },
            ChainBreak {
                segment: 3,
                offset: 0,
                expected_seq: 40,
                reason: "segment 3 is missing".into(),
                resumed_seq: None,
            },
        ],
    ] {
        let chain = ChainReport {
            segments: 2,
            records: 30,
            last_seq: 30,
            torn_tail_bytes: 0,
            breaks,
            end: None,
            pruned: None,
        };
        let mut want = serde_json::to_value(&chain).unwrap();
        want["first_break"] = want["breaks"]
            .get(0)
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        assert_eq!(
            serde_json::to_value(VerifyResult::from(&chain)).unwrap(),
            want
        );
    }
    // An exported record is the record's own JSON plus `time`.
    let r = sample_record();
    let mut want = serde_json::to_value(&r).unwrap();
    want["time"] = json!("2026-11-22T22:33:43.125Z");
    assert_eq!(
        serde_json::to_value(ExportedRecord::from(&r)).unwrap(),
        want
    );
}

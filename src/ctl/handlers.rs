//! What each control request does: key operations through
//! [`KeyService`], grants through the mount's grant store, audit
//! verification and export, fsck, metrics, and status. Each answer is one
//! of the typed results of [`super::protocol`].
//!
//! Owns: the mapping of requests onto library calls, of their errors onto
//! protocol error codes, and the audit records of grant operations.
//! Must never: hold a key-policy rule (those are [`crate::kms`]'s), touch
//! the socket (that is [`super::server`]), or put key material in a result.

use std::io::Write;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::protocol::{
    error_line, ok_line, AuditPosition, CancelDeletionResult, CensusResult, ChainBreakInfo,
    DisabledResult, ErrorCode, ExportSummary, ExportedBreak, ExportedLine, ExportedRecord,
    FsckResult, GrantCreated, GrantInfo, GrantList, GrantRetired, GrantRevoked, MetricsResult, Op,
    Request, RewrapStarted, RotateResult, RotationPeriodResult, ScheduleDeletionResult,
    StatusResult, TrimResult, UntrimResult, VerifyResult, VersionState, VersionStatus,
};
use super::server::Peer;
use super::ControlContext;
use crate::format::audit::ChainEvent;
use crate::format::config::FEATURE_KEY_GRANTS;
use crate::format::grants::{self as gfmt, Grant, Grantee, OpSet};
use crate::format::keyring::KeyState;
use crate::keyring::{now_secs, KeyringError};
use crate::kms::{self, KeyError, KeyService, OnMount};
use crate::policy::audit_stream::verify_streams;
use crate::policy::filter::AuditFilter;
use crate::policy::grants::{GrantStore, GrantStoreError};
use crate::policy::{read_proc, Event};
use crate::volume::VolumeError;

/// A failed request: its error code and message.
pub(super) type Failure = (ErrorCode, String);
pub(super) type Handled = Result<Value, Failure>;

/// Records a control request refused because `peer` is neither the
/// mount owner nor root (aggregated like every denial).
pub(super) fn deny_control(ctx: &ControlContext, peer: Peer) {
    ctx.access.record_denial(
        (peer.uid, peer.gid, peer.pid),
        || peer.principal(),
        Event {
            outcome: "denied",
            error: Some("not the mount owner or root".into()),
            ..Event::ok("control", None)
        },
    );
}

/// Answers `req` from `peer` (already admitted): the response line.
/// `audit_export` streams its records to `out` first.
pub(super) fn handle(
    ctx: &ControlContext,
    req: &Request,
    peer: Peer,
    out: &mut dyn Write,
) -> String {
    let r = match &req.op {
        Op::AuditExport { .. } => export_audit(ctx, &req.op, out),
        _ => super::key_handlers::gate(ctx, &req.op, req.key.as_deref(), peer).and_then(|()| {
            super::key_handlers::dispatch_keyed(ctx, &req.op, req.key.as_deref(), peer)
                .unwrap_or_else(|| dispatch(ctx, &req.op, peer))
        }),
    };
    match r {
        Ok(v) => ok_line(&req.id, v),
        Err((code, msg)) => error_line(&req.id, code, &msg),
    }
}

/// A result as the `result` object of a response.
pub(super) fn reply<T: Serialize>(t: &T) -> Handled {
    serde_json::to_value(t).map_err(|e| (ErrorCode::Internal, e.to_string()))
}

fn vol_code(e: &VolumeError) -> ErrorCode {
    match e {
        VolumeError::ReadOnly => ErrorCode::ReadOnly,
        VolumeError::Keyring(KeyringError::Lifecycle(_)) | VolumeError::Config(_) => {
            ErrorCode::Invalid
        }
        _ => ErrorCode::Internal,
    }
}

fn vol_err(e: VolumeError) -> Failure {
    (vol_code(&e), e.to_string())
}

pub(super) fn key_err(e: KeyError) -> Failure {
    let code = match &e {
        KeyError::Invalid(_) => ErrorCode::Invalid,
        KeyError::ReadOnlyMount => ErrorCode::ReadOnly,
        KeyError::Busy(_) => ErrorCode::Busy,
        KeyError::AuditFailed(_) => ErrorCode::AuditFailed,
        KeyError::Kms(_) => ErrorCode::Kms,
        KeyError::Rollback(_) => ErrorCode::Invalid,
        KeyError::Volume(v) => vol_code(v),
    };
    (code, e.to_string())
}

/// The key service for a request by `peer`.
pub(super) fn keys(ctx: &ControlContext, peer: Peer) -> KeyService<'_> {
    KeyService::on_mount(
        &ctx.vol,
        OnMount {
            access: &ctx.access,
            actor: peer.principal(),
            hooks: &*ctx.hooks,
            last_census: &ctx.census,
        },
    )
}

fn dispatch(ctx: &ControlContext, op: &Op, peer: Peer) -> Handled {
    let vol = &ctx.vol;
    match op {
        Op::Status => reply(&status(ctx)),
        Op::GrantCreate { .. }
        | Op::GrantList { .. }
        | Op::GrantRetire { .. }
        | Op::GrantRevoke { .. } => handle_grant(ctx, op, peer),
        Op::AuditExport { .. } => Err((ErrorCode::Invalid, "audit_export streams".into())),
        Op::KeyCreate { .. }
        | Op::KeyList
        | Op::KeyAliasAdd { .. }
        | Op::KeyAliasRemove { .. }
        | Op::KeyAssign { .. }
        | Op::KeyUnassign { .. }
        | Op::KeyPolicyGet
        | Op::KeyPolicySet { .. }
        | Op::RewrapPath { .. } => Err((
            ErrorCode::Internal,
            "named-key requests are answered by key_handlers".into(),
        )),
        Op::AuditVerify => {
            ctx.access.flush_denials();
            if let Some(a) = ctx.access.audit_log() {
                let _ = a.sync();
            }
            let reports = verify_streams(vol, &mut |_, _| {})
                .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
            reply(&VerifyResult::from(reports.as_slice()))
        }
        Op::AuditPrune { before, max_bytes } => {
            let before_ms = match before {
                Some(b) => Some(
                    crate::policy::filter::parse_time_filter(b)
                        .map_err(|e| (ErrorCode::Invalid, e))?,
                ),
                None => None,
            };
            if before_ms.is_none() && max_bytes.is_none() {
                return Err((
                    ErrorCode::Invalid,
                    "say what to prune: before (a time, date or duration ago) and/or max_bytes"
                        .into(),
                ));
            }
            let log = ctx.access.audit_log().ok_or_else(|| {
                (
                    ErrorCode::Invalid,
                    "this mount keeps no audit log (--no-audit)".to_string(),
                )
            })?;
            ctx.access.flush_denials();
            let rule = crate::format::audit::PruneRule {
                before_ms,
                max_bytes: *max_bytes,
            };
            let out = log.prune(rule, peer.principal()).map_err(|e| {
                let code = match e {
                    crate::policy::audit::PruneError::Refused(_) => ErrorCode::Invalid,
                    crate::policy::audit::PruneError::Audit(_) => ErrorCode::AuditFailed,
                    crate::policy::audit::PruneError::Io(_) => ErrorCode::Internal,
                };
                (code, e.to_string())
            })?;
            reply(&out)
        }
        Op::AuditRetention {
            max_age,
            max_bytes,
            allow_short,
        } => {
            let r = keys(ctx, peer)
                .set_audit_retention(max_age.as_deref(), *max_bytes, *allow_short)
                .map_err(key_err)?;
            reply(&crate::ctl::protocol::RetentionResult::from(r))
        }
        Op::Metrics => reply(&MetricsResult {
            text: render_metrics(ctx),
        }),
        Op::Rotate => {
            let primary = keys(ctx, peer).rotate().map_err(key_err)?;
            reply(&RotateResult { primary })
        }
        Op::Rewrap => {
            let primary = keys(ctx, peer).begin_rewrap(&ctx.rewrap).map_err(key_err)?;
            kms::spawn_rewrap(vol.clone(), ctx.rewrap.clone())
                .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
            reply(&RewrapStarted {
                started: true,
                primary,
            })
        }
        Op::Census => {
            let c = keys(ctx, peer).census().map_err(key_err)?;
            reply(&CensusResult::from(&c))
        }
        Op::Fsck => {
            let progress = crate::volume::fsck::FsckProgress::default();
            let report = vol.check_live(&progress).map_err(vol_err)?;
            reply(&FsckResult::from(&report))
        }
        Op::Disable => {
            keys(ctx, peer).disable().map_err(key_err)?;
            reply(&DisabledResult { disabled: true })
        }
        Op::Enable => {
            keys(ctx, peer).enable().map_err(key_err)?;
            reply(&DisabledResult { disabled: false })
        }
        Op::SetRotationPeriod {
            period,
            allow_short,
        } => {
            let s = keys(ctx, peer)
                .set_rotation_period(period.as_deref(), *allow_short)
                .map_err(key_err)?;
            reply(&RotationPeriodResult::from(s))
        }
        Op::Trim { min_version, force } => {
            let t = keys(ctx, peer)
                .trim(*min_version, *force)
                .map_err(key_err)?;
            reply(&TrimResult::from(t))
        }
        Op::Untrim { version } => {
            keys(ctx, peer).untrim(*version).map_err(key_err)?;
            reply(&UntrimResult { enabled: *version })
        }
        Op::ScheduleDeletion {
            version,
            wait,
            confirm,
        } => {
            let p = keys(ctx, peer)
                .schedule_deletion(*version, wait.as_deref(), *confirm)
                .map_err(key_err)?;
            reply(&ScheduleDeletionResult::from(p))
        }
        Op::CancelDeletion { version } => {
            keys(ctx, peer).cancel_deletion(*version).map_err(key_err)?;
            reply(&CancelDeletionResult {
                version: *version,
                state: VersionState::Retired,
            })
        }
    }
}

/// `status.audit`: position, size on disk, prunes, headroom, retention.
fn audit_position(ctx: &ControlContext, a: &crate::policy::audit::AuditLog) -> AuditPosition {
    let (segment, next_seq, key_version) = a.position();
    let usage = a.usage().unwrap_or_default();
    let free = crate::sys::fstatvfs(ctx.vol.root())
        .map(|st| st.f_bavail.saturating_mul(st.f_frsize))
        .unwrap_or(0);
    let retention = KeyService::offline(&ctx.vol).audit_retention();
    AuditPosition {
        segment,
        records: next_seq - 1,
        key_version,
        bytes: usage.bytes,
        segments: usage.segments,
        pruned_through: usage.pruned_through_seq,
        records_pruned: usage.records_pruned,
        headroom: free + usage.reserve_left,
        retention: retention.map(|r| crate::ctl::protocol::RetentionResult::from(Some(r))),
        host: a.stream().name(),
    }
}

fn status(ctx: &ControlContext) -> StatusResult {
    let cfg = ctx.vol.config();
    let census = ctx.census.lock().clone();
    let keys = KeyService::offline(&ctx.vol).status();
    let versions = keys
        .versions
        .iter()
        .map(|v| VersionStatus::of(v, census.as_ref()))
        .collect();
    StatusResult {
        volume_id: cfg.volume_id,
        format_version: cfg.format_version,
        cipherdir: std::fs::canonicalize(ctx.vol.cipherdir())
            .unwrap_or_else(|_| ctx.vol.cipherdir().to_path_buf()),
        mountpoint: ctx.mountpoint.clone(),
        read_only: ctx.vol.read_only(),
        disabled: keys.disabled,
        primary: keys.primary,
        versions,
        rotation_period: keys.rotation_period,
        next_rotation: keys.next_rotation,
        rewrap: ctx.rewrap.report().into(),
        census: census.as_ref().map(CensusResult::from),
        grants: ctx
            .access
            .grant_store()
            .map(|g| g.list(None, None).len() as u64),
        audit: ctx.access.audit_log().map(|a| audit_position(ctx, a)),
        keyring: keyring_status(&ctx.vol),
        keys: KeyService::offline(&ctx.vol)
            .list_keys()
            .into_iter()
            .map(super::protocol::KeyEntry::from)
            .collect(),
        space: crate::metrics::METRICS
            .space()
            .map(
                |(free, margin, write_through)| crate::ctl::protocol::SpaceStatus {
                    free,
                    margin,
                    write_through,
                },
            ),
    }
}

fn keyring_status(vol: &crate::volume::Volume) -> crate::ctl::protocol::KeyringStatus {
    let kr = vol.keyring().read();
    crate::ctl::protocol::KeyringStatus {
        layout: kr.layout(),
        generation: kr.generation(),
        unlocked_by: kr.unlocked_by().cloned().map(Into::into),
        keyslots: kr.slots().into_iter().map(Into::into).collect(),
        kms: kr.authority().map(|a| a.last_seen().into()),
    }
}

/// [`crate::metrics::METRICS`] plus the state of `vol`'s keyring (key
/// versions by state, primary version, disabled flag), as served by the
/// control op `metrics`.
fn render_metrics(ctx: &ControlContext) -> String {
    use std::fmt::Write as _;
    let vol = &ctx.vol;
    let mut o = String::new();
    let (primary, disabled, states) = {
        let kr = vol.keyring().read();
        let mut states = [0u64; 4];
        for v in kr.versions() {
            let i = match v.state {
                KeyState::Enabled => 0,
                KeyState::Retired => 1,
                KeyState::PendingDeletion => 2,
                KeyState::Destroyed => 3,
            };
            states[i] += 1;
        }
        (kr.primary(), kr.disabled(), states)
    };
    let _ = writeln!(
        o,
        "# HELP sealfs_key_primary_version The master key version new keys are wrapped under."
    );
    let _ = writeln!(o, "# TYPE sealfs_key_primary_version gauge");
    let _ = writeln!(o, "sealfs_key_primary_version {primary}");
    let _ = writeln!(
        o,
        "# HELP sealfs_key_disabled 1 while the key is disabled (all file I/O refused)."
    );
    let _ = writeln!(o, "# TYPE sealfs_key_disabled gauge");
    let _ = writeln!(o, "sealfs_key_disabled {}", u8::from(disabled));
    let _ = writeln!(
        o,
        "# HELP sealfs_key_versions Master key versions, by lifecycle state."
    );
    let _ = writeln!(o, "# TYPE sealfs_key_versions gauge");
    for (i, name) in ["enabled", "retired", "pending_deletion", "destroyed"]
        .iter()
        .enumerate()
    {
        let _ = writeln!(o, "sealfs_key_versions{{state=\"{name}\"}} {}", states[i]);
    }
    let _ = writeln!(
        o,
        "# HELP sealfs_named_key_info One series per named key: its id, first alias, state and primary version (value 1)."
    );
    let _ = writeln!(o, "# TYPE sealfs_named_key_info gauge");
    for k in KeyService::offline(vol).list_keys() {
        let alias = k.aliases.first().map_or("", String::as_str);
        let _ = writeln!(
            o,
            "sealfs_named_key_info{{key=\"{}\",alias=\"{alias}\",state=\"{}\",primary=\"{}\"}} 1",
            k.id, k.state, k.primary
        );
    }
    let _ = writeln!(
        o,
        "# HELP sealfs_read_only 1 if the volume is mounted read-only."
    );
    let _ = writeln!(o, "# TYPE sealfs_read_only gauge");
    let _ = writeln!(o, "sealfs_read_only {}", u8::from(vol.read_only()));
    if let Some(a) = ctx.access.audit_log() {
        let p = audit_position(ctx, a);
        for (name, help, v) in [
            ("sealfs_audit_log_bytes", "Bytes of audit log segments on disk.", p.bytes),
            ("sealfs_audit_log_segments", "Audit log segments on disk.", p.segments),
            (
                "sealfs_audit_headroom_bytes",
                "Bytes the audit log can still grow by before it fails closed (free space in CIPHERDIR plus its reserve).",
                p.headroom,
            ),
            (
                "sealfs_audit_records_pruned",
                "Audit records pruned so far (retention or audit prune).",
                p.records_pruned,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} gauge");
            let _ = writeln!(o, "{name} {v}");
        }
    }
    crate::metrics::METRICS.render_for(&o, &vol.config().volume_id)
}

/// Records a control operation before it runs (fail-closed: no record, no operation).
fn audit_control(
    ctx: &ControlContext,
    peer: Peer,
    op: &str,
    detail: Option<String>,
) -> Result<(), Failure> {
    ctx.access
        .record_principal(
            peer.principal(),
            Event {
                detail,
                ..Event::ok(op, None)
            },
        )
        .map_err(|e| {
            (
                ErrorCode::AuditFailed,
                format!("the audit record could not be written ({e:?}); operation refused"),
            )
        })
}

fn grant_err(e: GrantStoreError) -> Failure {
    let code = match &e {
        GrantStoreError::Grant(_) => ErrorCode::Invalid,
        GrantStoreError::NotFound(_) => ErrorCode::NotFound,
        GrantStoreError::NotGrantee => ErrorCode::Forbidden,
        _ => ErrorCode::Internal,
    };
    (code, e.to_string())
}

fn grants_of(ctx: &ControlContext) -> Result<&Arc<GrantStore>, Failure> {
    ctx.access
        .grant_store()
        .ok_or((ErrorCode::Invalid, "this mount has no grant store".into()))
}

/// Records how ending a grant went: `ended` with the grant id on success,
/// `op` with `failure` as outcome and the reason otherwise.
fn record_grant_end(
    ctx: &ControlContext,
    peer: Peer,
    op: &str,
    ended: &str,
    failure: &str,
    r: Result<Grant, GrantStoreError>,
) -> Result<Grant, Failure> {
    let event = match &r {
        Ok(g) => Event {
            grant: Some(&g.id),
            ..Event::ok(ended, None)
        },
        Err(e) => Event {
            outcome: failure,
            error: Some(e.to_string()),
            ..Event::ok(op, None)
        },
    };
    let _ = ctx.access.record_principal(peer.principal(), event);
    r.map_err(grant_err)
}

/// `grant_create`: a grant on the entries of key `key` (`None`: the
/// default key). The first grant on another key adds the `key-grants`
/// feature to the config before it is stored (an older sealfs, which
/// would read it as a grant on every key, then refuses the volume).
pub(super) fn create_grant(ctx: &ControlContext, op: &Op, peer: Peer, key: Option<u32>) -> Handled {
    let store = grants_of(ctx)?;
    let Op::GrantCreate {
        grantee,
        ops,
        path_prefix,
        expires,
        name,
    } = op
    else {
        return Err((ErrorCode::Internal, "not grant_create".into()));
    };
    let key = key.filter(|k| *k != store.default_key());
    let bad = |e: gfmt::GrantError| (ErrorCode::Invalid, e.to_string());
    let grantee = Grantee::parse(grantee).map_err(bad)?;
    let ops = OpSet::parse(ops).map_err(bad)?;
    gfmt::check_prefix(path_prefix).map_err(bad)?;
    let expires = expires
        .as_deref()
        .map(|e| gfmt::parse_expiry(e, now_secs()))
        .transpose()
        .map_err(bad)?;
    let on_key = key
        .map(|k| {
            format!(
                " on key {}",
                crate::kms::key_label(&ctx.vol.keyring().read(), k)
            )
        })
        .unwrap_or_default();
    audit_control(
        ctx,
        peer,
        "grant_create",
        Some(format!(
            "{} {} {}{}{on_key}",
            grantee.display(),
            ops.names().join(","),
            path_prefix,
            expires
                .map(|e| format!(" until {}", gfmt::format_utc(e)))
                .unwrap_or_default()
        )),
    )?;
    if key.is_some() && !ctx.vol.config().has_feature(FEATURE_KEY_GRANTS) {
        ctx.vol
            .update_config(|c| {
                c.features.push(FEATURE_KEY_GRANTS.to_string());
                Ok(())
            })
            .map_err(|e| (vol_code(&e), e.to_string()))?;
    }
    let (g, token) = store
        .create(
            grantee,
            ops,
            path_prefix,
            expires,
            name.clone(),
            peer.uid,
            key,
        )
        .map_err(grant_err)?;
    let _ = ctx.access.record_principal(
        peer.principal(),
        Event {
            grant: Some(&g.id),
            ..Event::ok("grant_created", None)
        },
    );
    reply(&GrantCreated {
        grant: GrantInfo::from(&g),
        grant_token: token,
    })
}

fn handle_grant(ctx: &ControlContext, op: &Op, peer: Peer) -> Handled {
    let store = grants_of(ctx)?;
    match op {
        Op::GrantCreate { .. } => create_grant(ctx, op, peer, None),
        Op::GrantList {
            grantee,
            path_prefix,
        } => {
            let grantee = grantee
                .as_deref()
                .map(Grantee::parse)
                .transpose()
                .map_err(|e| (ErrorCode::Invalid, e.to_string()))?;
            let list = store.list(grantee, path_prefix.as_deref());
            reply(&GrantList {
                grants: list.iter().map(GrantInfo::from).collect(),
            })
        }
        Op::GrantRetire { token } => {
            let admin = peer.uid == 0 || peer.uid == ctx.owner_uid;
            let mut gids = read_proc(peer.pid).1;
            gids.push(peer.gid);
            if !admin {
                // A stranger's wrong guess is a denial (aggregated), not
                // two records per attempt.
                if let Err(e) = store.retirable(&token.0, peer.uid, &gids, admin) {
                    ctx.access.record_denial(
                        (peer.uid, peer.gid, peer.pid),
                        || peer.principal(),
                        Event {
                            outcome: "denied",
                            error: Some(e.to_string()),
                            ..Event::ok("grant_retire", None)
                        },
                    );
                    return Err(grant_err(e));
                }
            }
            audit_control(ctx, peer, "grant_retire", None)?;
            let r = store.retire(&token.0, peer.uid, &gids, admin);
            let g = record_grant_end(ctx, peer, "grant_retire", "grant_retired", "denied", r)?;
            ctx.hooks.drop_cached_file_data();
            reply(&GrantRetired { retired: g.id })
        }
        Op::GrantRevoke { grant_id } => {
            audit_control(ctx, peer, "grant_revoke", Some(grant_id.clone()))?;
            let r = store.revoke(grant_id);
            // Drop whatever the kernel cached, revoked or not stored.
            ctx.hooks.drop_cached_file_data();
            let g = record_grant_end(ctx, peer, "grant_revoke", "grant_revoked", "error", r)?;
            reply(&GrantRevoked { revoked: g.id })
        }
        _ => Err((ErrorCode::Internal, "not a grant operation".into())),
    }
}

fn export_audit(ctx: &ControlContext, op: &Op, out: &mut dyn Write) -> Handled {
    let Op::AuditExport {
        since,
        until,
        principal,
        path_prefix,
        operation,
    } = op
    else {
        return Err((ErrorCode::Internal, "not an export".into()));
    };
    let filter = AuditFilter::parse(
        since.as_deref(),
        until.as_deref(),
        principal.as_deref(),
        path_prefix.as_deref(),
        operation.as_deref(),
    )
    .map_err(|e| (ErrorCode::Invalid, e))?;
    ctx.access.flush_denials();
    if let Some(a) = ctx.access.audit_log() {
        let _ = a.sync();
    }
    let mut exported = 0u64;
    let mut write_err = None;
    // Past a break the export goes on with the next record that verifies;
    // each break is streamed where it happened.
    let reports = verify_streams(&ctx.vol, &mut |stream, e| {
        if write_err.is_some() {
            return;
        }
        let v = match e {
            ChainEvent::Record(r) if filter.matches(r) => {
                exported += 1;
                serde_json::to_value(ExportedLine {
                    record: ExportedRecord::in_stream(r, stream),
                })
            }
            ChainEvent::Record(_) => return,
            ChainEvent::Break(b) => serde_json::to_value(ExportedBreak {
                brk: ChainBreakInfo::in_stream(b, stream),
            }),
        };
        let written = v
            .map_err(std::io::Error::other)
            .and_then(|v| writeln!(out, "{v}"));
        if let Err(e) = written {
            write_err = Some(e);
        }
    })
    .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
    if let Some(e) = write_err {
        return Err((ErrorCode::Internal, e.to_string()));
    }
    reply(&ExportSummary {
        exported,
        verify: VerifyResult::from(reports.as_slice()),
    })
}

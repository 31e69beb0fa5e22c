//! The control requests about named keys (issue 22): `key_create`,
//! `key_list`, aliases, assignments, `rewrap_path`, and the key-scoped
//! forms of the lifecycle requests (a request's `key` field).
//!
//! Owns: mapping those requests onto [`KeyService`] calls and their results.
//! Must never: hold a key-policy rule (those are [`crate::kms`]'s), or put
//! key material in a result or a message.

use zeroize::Zeroize;

use super::handlers::{key_err, keys, reply, Failure, Handled};
use super::protocol::{
    AssignmentEntry, CancelDeletionResult, KeyChanged, KeyCreated, KeyEntry, KeyListResult,
    KeyMaterial, KeyPolicyResult, Op, RewrapStarted, RotateResult, RotationPeriodResult,
    ScheduleDeletionResult, TrimResult, UntrimResult, VersionState,
};
use super::server::Peer;
use super::ControlContext;
use crate::crypto::SecretKey;
use crate::format::grants::parse_expiry;
use crate::kms::{self, KeyError, KeyService, KeySpec};
use crate::policy::key_policy::policy_hash;
use crate::volume::rewrap::RewrapTo;

fn invalid(m: impl Into<String>) -> Failure {
    key_err(KeyError::Invalid(m.into()))
}

/// 64 hex digits to a key, the decoded bytes zeroized.
fn material_of(m: &KeyMaterial) -> Result<SecretKey, Failure> {
    let s = m.0.trim();
    if s.len() != 64 || !s.is_ascii() {
        return Err(invalid("imported key material must be exactly 32 bytes"));
    }
    let mut b = [0u8; 32];
    for (i, o) in b.iter_mut().enumerate() {
        match u8::from_str_radix(&s[2 * i..2 * i + 2], 16) {
            Ok(v) => *o = v,
            Err(_) => {
                b.zeroize();
                return Err(invalid("imported key material is not hex"));
            }
        }
    }
    if b.iter().all(|x| *x == 0) {
        return Err(invalid("imported key material is all zeros"));
    }
    let k = SecretKey::from_bytes(b);
    b.zeroize();
    Ok(k)
}

fn changed(s: &KeyService<'_>, id: u32) -> Handled {
    let k = s
        .list_keys()
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| invalid(format!("no key {id}")))?;
    reply(&KeyChanged {
        id,
        aliases: k.aliases,
        state: k.state,
    })
}

/// Checks that version `v` belongs to key `id` (a key-scoped request on a
/// version of another key is refused rather than acted on).
fn version_of(s: &KeyService<'_>, id: u32, v: u32) -> Result<(), Failure> {
    let owner = s
        .list_keys()
        .into_iter()
        .find(|k| k.versions.iter().any(|x| x.version == v));
    match owner {
        Some(k) if k.id == id => Ok(()),
        Some(k) => Err(invalid(format!("version {v} belongs to key {}", k.id))),
        None => Err(invalid(format!("no key version {v}"))),
    }
}

/// The key-policy action a request needs (docs/CONTROL.md §16.3), if it
/// administers a key (`None`: a volume request, for the mount owner and
/// root). `keyed`: the request names a key (a `disable` without one is
/// the volume-wide disable).
pub(super) fn admin_action(op: &Op, keyed: bool) -> Option<&'static str> {
    Some(match op {
        Op::Rotate | Op::SetRotationPeriod { .. } => "admin:rotate",
        Op::Rewrap | Op::RewrapPath { .. } => "admin:rewrap",
        Op::Disable if keyed => "admin:disable",
        Op::Enable if keyed => "admin:enable",
        Op::Trim { .. } | Op::Untrim { .. } => "admin:trim",
        Op::ScheduleDeletion { .. } | Op::CancelDeletion { .. } => "admin:schedule-deletion",
        Op::KeyAliasAdd { .. } | Op::KeyAliasRemove { .. } => "admin:alias",
        Op::KeyAssign { .. } | Op::KeyUnassign { .. } => "admin:assign",
        Op::KeyPolicyGet | Op::KeyPolicySet { .. } => "admin:policy",
        Op::GrantCreate { .. } | Op::GrantRevoke { .. } => "admin:grant",
        _ => return None,
    })
}

/// Decides a key administration request by the policy of the key it
/// addresses (without a policy: the mount owner and root). A refusal is
/// counted and audited (aggregated like every denial).
pub(super) fn gate(
    ctx: &ControlContext,
    op: &Op,
    key: Option<&str>,
    peer: Peer,
) -> Result<(), Failure> {
    let Some(action) = admin_action(op, key.is_some()) else {
        return Ok(());
    };
    let s = keys(ctx, peer);
    let id = match op {
        Op::RewrapPath { path } | Op::KeyUnassign { path } => s.key_at(path),
        // A grant is revoked under the policy of the key it names.
        Op::GrantRevoke { grant_id } => match ctx.access.grant_store().and_then(|g| {
            g.get(grant_id)
                .map(|found| found.key.unwrap_or_else(|| g.default_key()))
        }) {
            Some(id) => Ok(id),
            None => s.resolve_key(None),
        },
        _ => s.resolve_key(key),
    }
    .map_err(key_err)?;
    let who = crate::policy::key_policy::Asker {
        uid: peer.uid,
        gid: peer.gid,
        groups: &mut || peer.supplementary_groups(),
    };
    if s.admin_allowed(id, action, who, ctx.owner_uid) {
        return Ok(());
    }
    crate::metrics::denied(crate::metrics::Denial::KeyPolicy);
    let label = kms::key_label(&ctx.vol.keyring().read(), id);
    let why = format!(
        "the policy of {label} does not allow {action} to uid {}",
        peer.uid
    );
    ctx.access.record_denial(
        (peer.uid, peer.gid, peer.pid),
        || peer.principal(),
        crate::policy::Event {
            outcome: "denied",
            error: Some(why.clone()),
            ..crate::policy::Event::ok("control", None)
        },
    );
    Err((super::protocol::ErrorCode::Forbidden, why))
}

/// The key-scoped requests: `Some` when `op` is one (with the answer),
/// `None` when the ordinary handler should answer it (no `key` given,
/// or an op that does not take one).
pub(super) fn dispatch_keyed(
    ctx: &ControlContext,
    op: &Op,
    key: Option<&str>,
    peer: Peer,
) -> Option<Handled> {
    let s = keys(ctx, peer);
    let resolve = || s.resolve_key(key).map_err(key_err);
    let r = match op {
        Op::KeyCreate {
            alias,
            description,
            rotation_period,
            material,
            expires,
        } => (|| {
            let material = material.as_ref().map(material_of).transpose()?;
            let expires = match expires {
                None => None,
                Some(_) if material.is_none() => {
                    return Err(invalid("an expiry is for imported keys (--import)"));
                }
                Some(e) => Some(
                    parse_expiry(e, crate::keyring::now_secs())
                        .map_err(|e| invalid(e.to_string()))?,
                ),
            };
            let id = s
                .create_key(KeySpec {
                    alias: alias.clone(),
                    description: description.clone(),
                    rotation_period: rotation_period.clone(),
                    material,
                    expires,
                })
                .map_err(key_err)?;
            let primary = ctx.vol.keyring().read().primary_of(id).unwrap_or(0);
            reply(&KeyCreated { id, primary })
        })(),
        Op::KeyList => {
            let census = ctx.census.lock().clone();
            let keys = s
                .list_keys()
                .into_iter()
                .map(|k| KeyEntry::with_census(k, census.as_ref()))
                .collect();
            let assignments = ctx
                .vol
                .keyring()
                .read()
                .assignments()
                .iter()
                .map(|a| AssignmentEntry {
                    dir_id: crate::format::config::hex(&a.dir_id),
                    key_id: a.key_id,
                })
                .collect();
            reply(&KeyListResult { keys, assignments })
        }
        Op::KeyAliasAdd { alias } => resolve().and_then(|id| {
            s.add_alias(id, alias).map_err(key_err)?;
            changed(&s, id)
        }),
        Op::KeyAliasRemove { alias } => resolve().and_then(|id| {
            s.remove_alias(id, alias).map_err(key_err)?;
            changed(&s, id)
        }),
        Op::KeyAssign { path } => resolve().and_then(|id| {
            s.assign(path, id).map_err(key_err)?;
            changed(&s, id)
        }),
        Op::KeyUnassign { path } => (|| {
            s.unassign(path).map_err(key_err)?;
            let id = s.key_at(path).map_err(key_err)?;
            changed(&s, id)
        })(),
        Op::RewrapPath { path } => (|| {
            let id = s.key_at(path).map_err(key_err)?;
            let primary = s
                .begin_rewrap_to(&ctx.rewrap, RewrapTo::Key(id), Some(path))
                .map_err(key_err)?;
            kms::spawn_rewrap_to(
                ctx.vol.clone(),
                ctx.rewrap.clone(),
                RewrapTo::Key(id),
                Some(path.clone()),
            )
            .map_err(|e| (super::protocol::ErrorCode::Internal, e.to_string()))?;
            reply(&RewrapStarted {
                started: true,
                primary,
            })
        })(),
        Op::KeyPolicyGet => resolve().and_then(|id| {
            let policy = s.key_policy(id);
            reply(&KeyPolicyResult {
                id,
                sha256: policy.as_deref().map(policy_hash),
                policy,
            })
        }),
        Op::KeyPolicySet { policy } => resolve().and_then(|id| {
            let policy = s.set_key_policy(id, policy.as_deref()).map_err(key_err)?;
            reply(&KeyPolicyResult {
                id,
                sha256: policy.as_deref().map(policy_hash),
                policy,
            })
        }),
        _ if key.is_none() => return None,
        Op::Rotate => resolve().and_then(|id| {
            let primary = s.rotate_key(id).map_err(key_err)?;
            reply(&RotateResult { primary })
        }),
        Op::Rewrap => resolve().and_then(|id| {
            let primary = s
                .begin_rewrap_to(&ctx.rewrap, RewrapTo::OwnKey(Some(id)), None)
                .map_err(key_err)?;
            kms::spawn_rewrap_to(
                ctx.vol.clone(),
                ctx.rewrap.clone(),
                RewrapTo::OwnKey(Some(id)),
                None,
            )
            .map_err(|e| (super::protocol::ErrorCode::Internal, e.to_string()))?;
            reply(&RewrapStarted {
                started: true,
                primary,
            })
        }),
        Op::Disable => resolve().and_then(|id| {
            s.disable_key(id).map_err(key_err)?;
            changed(&s, id)
        }),
        Op::Enable => resolve().and_then(|id| {
            s.enable_key(id).map_err(key_err)?;
            changed(&s, id)
        }),
        Op::SetRotationPeriod {
            period,
            allow_short,
        } => resolve().and_then(|id| {
            let r = s
                .set_key_rotation_period(id, period.as_deref(), *allow_short)
                .map_err(key_err)?;
            reply(&RotationPeriodResult::from(r))
        }),
        Op::Trim { min_version, force } => resolve().and_then(|id| {
            let t = s.trim_key(id, *min_version, *force).map_err(key_err)?;
            reply(&TrimResult::from(t))
        }),
        Op::Untrim { version } => resolve().and_then(|id| {
            version_of(&s, id, *version)?;
            s.untrim(*version).map_err(key_err)?;
            reply(&UntrimResult { enabled: *version })
        }),
        Op::ScheduleDeletion {
            version: 0,
            wait,
            confirm,
        } => resolve().and_then(|id| {
            let (would_orphan, due) = s
                .schedule_key_deletion(id, wait.as_deref(), *confirm)
                .map_err(key_err)?;
            let primary = ctx.vol.keyring().read().primary_of(id).unwrap_or(0);
            reply(&ScheduleDeletionResult {
                version: primary,
                would_orphan,
                deletion_due: due,
                confirmed: due.is_some(),
            })
        }),
        Op::ScheduleDeletion {
            version,
            wait,
            confirm,
        } => resolve().and_then(|id| {
            version_of(&s, id, *version)?;
            let p = s
                .schedule_deletion(*version, wait.as_deref(), *confirm)
                .map_err(key_err)?;
            reply(&ScheduleDeletionResult::from(p))
        }),
        Op::CancelDeletion { version: 0 } => resolve().and_then(|id| {
            s.cancel_key_deletion(id).map_err(key_err)?;
            changed(&s, id)
        }),
        Op::CancelDeletion { version } => resolve().and_then(|id| {
            version_of(&s, id, *version)?;
            s.cancel_deletion(*version).map_err(key_err)?;
            reply(&CancelDeletionResult {
                version: *version,
                state: VersionState::Retired,
            })
        }),
        Op::GrantCreate { .. } => {
            resolve().and_then(|id| super::handlers::create_grant(ctx, op, peer, Some(id)))
        }
        // The grant's own key decides (see `gate`).
        Op::GrantRevoke { .. } => return None,
        Op::Status | Op::Census | Op::Metrics | Op::Fsck => return None,
        _ => Err((
            super::protocol::ErrorCode::BadRequest,
            "this operation does not take a \"key\"".into(),
        )),
    };
    Some(r)
}

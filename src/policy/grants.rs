//! The live grant store of a mounted volume, persisted sealed in
//! `sealfs.grants` (format in [`crate::format::grants`]).
//!
//! Owns: the grants in memory, their durable storage (written with
//! write-new, fsync, rename, fsync dir under the primary master key
//! version), grant tokens (generated here, shown once, only their hash
//! kept), and the [`LiveGrant`] flags that open handles check on every
//! read and write so a revocation or expiry takes effect at once.
//! Must never: keep or log a token, or persist a change it reports as failed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::crypto::fill_random;
use crate::format::config::hex;
use crate::format::grants::{
    self as gfmt, Access, Decision, Grant, GrantError, GrantOp, Grantee, OpSet,
};
use crate::sys;
use crate::sys::now_secs;
use crate::volume::Volume;
use std::ffi::OsStr;

/// The store file in CIPHERDIR.
pub use crate::format::reserved::GRANTS_FILE;
/// File mode of the grant store.
pub const GRANTS_MODE: u32 = 0o600;

/// Errors of the grant store.
#[derive(Debug, thiserror::Error)]
pub enum GrantStoreError {
    /// Bad arguments or a damaged store.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// No such grant (or the token matches none).
    #[error("no live grant {0}")]
    NotFound(String),
    /// Shared storage: another host ended the grant first.
    #[error("grant {0} was already ended on another host")]
    EndedElsewhere(String),
    /// The caller may not retire this grant.
    #[error("this grant is not yours to retire")]
    NotGrantee,
    /// Storing failed; the change was not made.
    #[error("cannot store grants: {0}")]
    Io(#[from] std::io::Error),
    /// No usable key to seal the store.
    #[error("the primary master key version is not usable")]
    NoKey,
    /// Randomness failure.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
    /// Shared storage: the grant store could not be locked or followed.
    #[error("cannot follow the grant store on shared storage: {0}")]
    Shared(String),
}

/// The revocation flag of one grant, held by the handles opened through it.
#[derive(Debug)]
pub struct LiveGrant {
    /// Grant id.
    pub id: String,
    ended: AtomicBool,
    expires: Option<u64>,
    /// The key it names (`None`: the default key).
    key: Option<u32>,
}

impl LiveGrant {
    /// Whether the grant still allows access at `now` (seconds).
    pub fn usable(&self, now: u64) -> bool {
        !self.ended.load(Ordering::Acquire) && self.expires.is_none_or(|e| now < e)
    }

    /// Whether it opens entries of key `key` (`default`: the default key's id).
    pub fn names_key(&self, key: u32, default: u32) -> bool {
        self.key.unwrap_or(default) == key
    }
}

struct State {
    grants: Vec<Grant>,
    live: HashMap<String, Arc<LiveGrant>>,
    generation: u64,
}

impl State {
    /// Makes `grants` (of `generation`) current: their live flags carry
    /// over, grants no longer there end (for the handles holding them).
    /// Whether any ended.
    fn publish(&mut self, grants: Vec<Grant>, generation: u64) -> bool {
        let live: HashMap<String, Arc<LiveGrant>> = grants
            .iter()
            .map(|g| {
                let l = self.live.get(&g.id).cloned().unwrap_or_else(|| live_of(g));
                (g.id.clone(), l)
            })
            .collect();
        let mut ended = false;
        for (id, l) in &self.live {
            if !live.contains_key(id) {
                l.ended.store(true, Ordering::Release);
                ended = true;
            }
        }
        self.grants = grants;
        self.live = live;
        self.generation = generation;
        ended
    }
}

/// How a grant ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// By its grantee, with the token.
    Retired,
    /// By the owner.
    Revoked,
    /// Its expiry passed.
    Expired,
}

/// The grants of one mounted volume.
pub struct GrantStore {
    vol: Arc<Volume>,
    state: RwLock<State>,
    /// Serializes changes with their store.
    change: Mutex<()>,
}

impl std::fmt::Debug for GrantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantStore")
            .field("grants", &self.state.read().grants.len())
            .finish_non_exhaustive()
    }
}

fn live_of(g: &Grant) -> Arc<LiveGrant> {
    Arc::new(LiveGrant {
        id: g.id.clone(),
        ended: AtomicBool::new(false),
        expires: g.expires,
        key: g.key,
    })
}

/// The generation of the stored grant store (0: none), from its header.
fn stored_generation(vol: &Volume) -> Result<u64, GrantStoreError> {
    let f = match sys::open_regular(vol.root(), OsStr::new(GRANTS_FILE), libc::O_RDONLY) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut head = [0u8; gfmt::STORE_HEADER + crate::crypto::TAG_LEN];
    let n = sys::read_at_most(&f, &mut head, 0)?;
    Ok(gfmt::store_header(&head[..n])?.1)
}

/// Reads the store of `vol` (empty if there is none); on shared storage,
/// first follows a keyring another host rotated when the store is sealed
/// under a version this daemon does not know yet.
fn load_grants_following(vol: &Volume) -> Result<(Vec<Grant>, u64), GrantStoreError> {
    match load_grants(vol) {
        Err(GrantStoreError::Grant(GrantError::Store(_))) if vol.shared().is_some() => {
            vol.refresh_keyring()
                .map_err(|e| GrantStoreError::Shared(e.to_string()))?;
            load_grants(vol)
        }
        r => r,
    }
}

/// Reads the store of `vol` (empty if there is none).
pub fn load_grants(vol: &Volume) -> Result<(Vec<Grant>, u64), GrantStoreError> {
    let bytes = match sys::read_regular(vol.root(), OsStr::new(GRANTS_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e.into()),
    };
    let (version, generation) = gfmt::store_header(&bytes)?;
    let kr = vol.keyring().read();
    let master = kr
        .master_key(version)
        .ok_or(GrantError::Store("sealed under a destroyed key version"))?;
    Ok((
        gfmt::open_store(&bytes, master, &vol.volume_id())?,
        generation,
    ))
}

impl GrantStore {
    /// Loads the store of `vol`.
    pub fn open(vol: Arc<Volume>) -> Result<GrantStore, GrantStoreError> {
        let (grants, generation) = load_grants(&vol)?;
        let live = grants.iter().map(|g| (g.id.clone(), live_of(g))).collect();
        Ok(GrantStore {
            vol,
            state: RwLock::new(State {
                grants,
                live,
                generation,
            }),
            change: Mutex::new(()),
        })
    }

    fn persist(&self, grants: &[Grant], generation: u64) -> Result<(), GrantStoreError> {
        let bytes = {
            let kr = self.vol.keyring().read();
            let primary = kr.primary();
            let master = kr.master_key(primary).ok_or(GrantStoreError::NoKey)?;
            gfmt::seal_store(grants, generation, primary, master, &self.vol.volume_id())?
        };
        sys::write_durably(self.vol.root(), GRANTS_FILE, &bytes, GRANTS_MODE)?;
        Ok(())
    }

    /// Shared storage, with `change` held: loads the store another host
    /// stored when its generation differs from this daemon's; grants gone
    /// from it end here too. Whether any grant ended.
    fn follow_stored(&self) -> Result<bool, GrantStoreError> {
        if stored_generation(&self.vol)? == self.state.read().generation {
            return Ok(false);
        }
        let (grants, generation) = load_grants_following(&self.vol)?;
        let mine = self.state.read().generation;
        if generation < mine {
            return Err(GrantStoreError::Shared(format!(
                "the stored grant store (generation {generation}) is older than the one this daemon stored or loaded ({mine}): refusing to follow or overwrite it (rolled back?)"
            )));
        }
        Ok(self.state.write().publish(grants, generation))
    }

    /// Shared storage: follows the store other hosts changed (a look at its
    /// header when they did not). Whether a grant ended (cached file data
    /// reached through it should go). Nothing to do otherwise.
    pub fn refresh(&self) -> Result<bool, GrantStoreError> {
        if self.vol.shared().is_none() {
            return Ok(false);
        }
        if stored_generation(&self.vol)? == self.state.read().generation {
            return Ok(false);
        }
        let _c = self.change.lock();
        self.follow_stored()
    }

    /// Applies `change` to a copy of the grants, stores it, then publishes
    /// it. On shared storage: under the store's lock, to the stored grants.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Vec<Grant>) -> Result<T, GrantStoreError>,
    ) -> Result<T, GrantStoreError> {
        let _c = self.change.lock();
        let _locked = self
            .vol
            .lock_resource(crate::volume::shared::Resource::Grants)
            .map_err(|e| GrantStoreError::Shared(e.to_string()))?;
        if _locked.is_some() {
            self.follow_stored()?;
        }
        let (mut grants, generation) = {
            let s = self.state.read();
            (s.grants.clone(), s.generation + 1)
        };
        let out = change(&mut grants)?;
        self.persist(&grants, generation)?;
        self.state.write().publish(grants, generation);
        Ok(out)
    }

    /// Creates a grant on the entries of key `key` (`None` or the
    /// default key: stored without a key, as every grant was before grants
    /// named keys); returns it and its token (shown once). A grant on
    /// another key needs the `key-grants` feature, which the caller
    /// announces in the config first (`ctl::handlers::create_grant`).
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        grantee: Grantee,
        ops: OpSet,
        path_prefix: &str,
        expires: Option<u64>,
        name: Option<String>,
        created_by: u32,
        key: Option<u32>,
    ) -> Result<(Grant, String), GrantStoreError> {
        let key = key.filter(|k| *k != self.vol.keyring().read().default_key_id());
        gfmt::check_prefix(path_prefix)?;
        let now = now_secs();
        if expires.is_some_and(|e| e <= now) {
            return Err(GrantError::Invalid("the expiry is in the past".into()).into());
        }
        let mut id = [0u8; 8];
        fill_random(&mut id)?;
        let mut tok = [0u8; 32];
        fill_random(&mut tok)?;
        let token = format!("sgt_{}", hex(&tok));
        let grant = Grant {
            id: format!("g-{}", hex(&id)),
            name,
            grantee,
            ops,
            path_prefix: path_prefix.to_string(),
            created: now,
            expires,
            token_sha256: gfmt::token_digest(&token),
            created_by,
            key,
        };
        let g = grant.clone();
        self.update(move |gs| {
            gs.push(g);
            Ok(())
        })?;
        Ok((grant, token))
    }

    /// The live grants, optionally only those of `grantee` or whose prefix
    /// is within / contains `path`.
    pub fn list(&self, grantee: Option<Grantee>, path: Option<&str>) -> Vec<Grant> {
        self.state
            .read()
            .grants
            .iter()
            .filter(|g| grantee.is_none_or(|x| x == g.grantee))
            .filter(|g| {
                path.is_none_or(|p| {
                    gfmt::is_within(p.as_bytes(), g.path_prefix.as_bytes())
                        || gfmt::is_within(g.path_prefix.as_bytes(), p.as_bytes())
                })
            })
            .cloned()
            .collect()
    }

    /// Ends the grant `id` (owner).
    pub fn revoke(&self, id: &str) -> Result<Grant, GrantStoreError> {
        let live = self.state.read().live.get(id).cloned();
        let r = self.update(|gs| {
            let i = gs.iter().position(|g| g.id == id).ok_or_else(|| {
                // Known here but gone from the stored grants: another host.
                if live.is_some() {
                    GrantStoreError::EndedElsewhere(id.to_string())
                } else {
                    GrantStoreError::NotFound(id.to_string())
                }
            })?;
            Ok(gs.remove(i))
        });
        // Even if the change could not be stored, the grant stops working
        // for this mount at once (the error says it was not stored).
        if let Some(l) = live {
            l.ended.store(true, Ordering::Release);
        }
        r
    }

    /// Ends the grant whose token is `token`, for a caller with `uid` and
    /// groups `gids` (the grantee) or an administrator.
    pub fn retire(
        &self,
        token: &str,
        uid: u32,
        gids: &[u32],
        admin: bool,
    ) -> Result<Grant, GrantStoreError> {
        let found = self.retirable(token, uid, gids, admin)?;
        self.revoke(&found.id)
    }

    /// The grant `token` would retire for `uid` (in groups `gids`; `admin`:
    /// the owner or root, who may retire any), without retiring it: a
    /// stranger's guess is refused before anything is written.
    pub fn retirable(
        &self,
        token: &str,
        uid: u32,
        gids: &[u32],
        admin: bool,
    ) -> Result<Grant, GrantStoreError> {
        let digest = gfmt::token_digest(token);
        let found = self
            .state
            .read()
            .grants
            .iter()
            .find(|g| g.token_sha256 == digest)
            .cloned()
            .ok_or_else(|| GrantStoreError::NotFound("for this token".into()))?;
        if !admin && !found.grantee.matches(uid, gids) {
            return Err(GrantStoreError::NotGrantee);
        }
        Ok(found)
    }

    /// Removes grants whose expiry passed; returns them.
    pub fn expire_due(&self, now: u64) -> Vec<Grant> {
        let due: Vec<String> = self
            .state
            .read()
            .grants
            .iter()
            .filter(|g| g.expires.is_some_and(|e| now >= e))
            .map(|g| g.id.clone())
            .collect();
        let mut out = Vec::new();
        for id in due {
            match self.revoke(&id) {
                Ok(g) => out.push(g),
                // Another host of a shared volume recorded it first.
                Err(GrantStoreError::EndedElsewhere(_)) => {}
                Err(e) => {
                    // Still unusable: LiveGrant::usable checks the expiry itself.
                    tracing::warn!("cannot store the expiry of grant {id}: {e}");
                }
            }
        }
        out
    }

    /// The earliest expiry of a live grant.
    pub fn next_expiry(&self) -> Option<u64> {
        self.state
            .read()
            .grants
            .iter()
            .filter_map(|g| g.expires)
            .min()
    }

    /// Re-seals the store under the primary key version (after a rotation).
    pub fn reseal(&self) -> Result<(), GrantStoreError> {
        if self.state.read().grants.is_empty()
            && sys::fstatat(self.vol.root(), OsStr::new(GRANTS_FILE)).is_err()
        {
            return Ok(());
        }
        self.update(|_| Ok(()))
    }

    /// Whether any grant exists (a fast "deny" for strangers otherwise).
    pub fn is_empty(&self) -> bool {
        self.state.read().grants.is_empty()
    }

    /// The grant `id`, if live.
    pub fn get(&self, id: &str) -> Option<Grant> {
        self.state
            .read()
            .grants
            .iter()
            .find(|g| g.id == id)
            .cloned()
    }

    /// The default key's id (what a grant without a key names).
    pub fn default_key(&self) -> u32 {
        self.vol.keyring().read().default_key_id()
    }

    /// Decides `access` at `path` for a principal; on success, the live
    /// grant that allowed it. With `key` (the id of the key of the entry
    /// used), only a grant that names that key counts.
    pub fn decide(
        &self,
        uid: u32,
        gids: &[u32],
        path: &[u8],
        access: Access,
        key: Option<u32>,
    ) -> Option<Arc<LiveGrant>> {
        let key = key.map(|k| (k, self.default_key()));
        let s = self.state.read();
        match gfmt::decide(&s.grants, (uid, gids), path, access, now_secs(), key) {
            Decision::Granted(id) => s.live.get(&id).filter(|l| l.usable(now_secs())).cloned(),
            Decision::Denied => None,
        }
    }
}

/// The grant operation a FUSE open with `flags` needs.
pub fn op_for_open(flags: i32) -> GrantOp {
    if flags & libc::O_ACCMODE == libc::O_RDONLY && flags & libc::O_TRUNC == 0 {
        GrantOp::Read
    } else {
        GrantOp::Write
    }
}

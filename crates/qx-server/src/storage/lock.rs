//! The write lock of a product's channel in a shared store: held while a release is
//! committed or yanked and while a channel state is compared and swapped.
//!
//! Taken in this process first (the requests of one server queue here, not in the database),
//! then across servers through the fleet database when it is shared (PostgreSQL's advisory
//! lock, released by the database if the holder dies). Object stores do not all honour
//! conditional writes (some ignore `If-None-Match` on a put), so the lock, not the store, is
//! what makes exactly one of two concurrent publishes win.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use qx_core::{ChannelName, ProductName, Sha256};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::fleet::store::{FleetStore, SharedLock};

use super::{StoreError, StoreResult};

/// How many in-process locks channels share (two channels on one only wait for each other).
const STRIPES: usize = 64;

/// The write locks of one store.
pub struct WriteLocks {
    stripes: Vec<Arc<Mutex<()>>>,
    shared: Option<Arc<dyn FleetStore>>,
}

/// A held write lock; dropping it releases it.
pub struct WriteGuard {
    _shared: Option<SharedLock>,
    _local: OwnedMutexGuard<()>,
}

impl WriteLocks {
    /// Locks of this process only (one server on the store).
    pub fn local() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
            shared: None,
        }
    }

    /// Locks shared through `fleet` when its database is shared by several servers.
    pub fn shared(fleet: Arc<dyn FleetStore>) -> Self {
        Self {
            shared: Some(fleet),
            ..Self::local()
        }
    }

    /// Takes the lock of `product`'s `channel`.
    pub async fn lock(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> StoreResult<WriteGuard> {
        let name = format!("qx-release-store/{product}/{channel}");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        let stripe = usize::try_from(h.finish() % STRIPES as u64).unwrap_or(0);
        let local = self.stripes[stripe].clone().lock_owned().await;
        let shared = match &self.shared {
            Some(fleet) => fleet.shared_lock(lock_key(&name)).await.map_err(|e| {
                StoreError::Unavailable(format!("taking the write lock of {name}: {e}"))
            })?,
            None => None,
        };
        Ok(WriteGuard {
            _shared: shared,
            _local: local,
        })
    }
}

/// The advisory-lock number of a name: the same in every server (a hash stable across
/// processes and builds).
fn lock_key(name: &str) -> i64 {
    let digest = Sha256::of(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    i64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_differ_by_name() {
        let a = lock_key("qx-release-store/app/stable");
        assert_eq!(a, lock_key("qx-release-store/app/stable"));
        assert_ne!(a, lock_key("qx-release-store/app/beta"));
    }

    #[tokio::test]
    async fn a_second_lock_of_a_channel_waits_for_the_first() {
        let locks = WriteLocks::local();
        let p = ProductName::new("app").expect("test value");
        let c = ChannelName::new("stable").expect("test value");
        let held = locks.lock(&p, &c).await.expect("test value");
        let second = locks.lock(&p, &c);
        tokio::pin!(second);
        assert!(futures_util::poll!(second.as_mut()).is_pending());
        drop(held);
        assert!(futures_util::poll!(second.as_mut()).is_ready());
    }
}

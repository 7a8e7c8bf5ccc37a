//! The order desk: what happens to a validated order before and after its store actor
//! (rules 4 to 7 of the judging order), shared by every connection.

use std::sync::Arc;

use dashmap::DashMap;

use crate::catalog::Catalog;
use crate::domain::{LockOrder, StoreId};
use crate::store::{LockError, LockResult, StoreHandle};
use crate::users::KnownUsers;

pub struct AppState {
    pub catalog: Catalog,
    /// The concurrent index from a store to its actor.
    pub stores: DashMap<StoreId, StoreHandle>,
    pub users: KnownUsers,
    /// Off only in tests that show the database guard alone stops oversell; it also
    /// turns off the sold-out fast path, which reads the same memory.
    pub memory_check: bool,
}

impl AppState {
    pub async fn lock_order(self: &Arc<Self>, order: LockOrder) -> LockResult {
        // Rule 4: the buyer must be a known user.
        match self.users.exists(order.buyer()).await {
            Ok(true) => {}
            Ok(false) => return Err(LockError::UserNotFound),
            Err(e) => {
                tracing::warn!(error = %e, "user lookup failed");
                return Err(LockError::Unavailable);
            }
        }

        // Rule 5: the known products must all belong to one store. Unknown products
        // are simply lines that cannot be served (rule 6).
        let mut store = None;
        let mut sold_out = true;
        for line in order.lines() {
            let Some(product) = self.catalog.get(line.product) else {
                continue;
            };
            match store {
                None => store = Some(product.store),
                Some(s) if s != product.store => return Err(LockError::MixedStores),
                Some(_) => {}
            }
            if product.stock() >= line.quantity {
                sold_out = false;
            }
        }
        let Some(store) = store else {
            return Err(LockError::NoneAvailable);
        };

        // Sold-out fast path: the actor publishes its stock after every change, so when
        // no line fits the published stock the actor would refuse the order too; the
        // refusal is answered without queueing behind the store's other orders.
        if self.memory_check && sold_out {
            return Err(LockError::NoneAvailable);
        }
        // Rules 6 and 7 belong to the store's actor.
        let handle = match self.stores.get(&store) {
            Some(handle) => handle.clone(),
            None => return Err(LockError::ShuttingDown),
        };
        handle.lock(order).await
    }
}

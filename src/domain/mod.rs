//! Kitara's domain: identifiers, a validated order, the pure stock rules, the life of a
//! hold, per-customer limits, the rules of the owner's product changes, idempotency
//! keys, and which node should own a store.
//!
//! Nothing here does I/O or awaits, so the rules can be checked by the thousand against
//! a simple model (see the unit tests in `stock`).

mod change;
mod hold;
mod key;
mod limits;
mod order;
mod ownership;
mod stock;

pub use change::{ChangeRefusal, Changes, ProductChange};
pub use hold::{Deadline, Ending, Hold, HoldBook, OrderStatus, Resolution, Transition, transition};
pub use key::{Fingerprint, IdempotencyKey, KeyError, MAX_KEY_LEN};
pub use limits::Purchases;
pub use order::{LockOrder, MAX_HOLD_SECONDS, MAX_LINES, MAX_QUANTITY, OrderError, OrderLine};
pub use ownership::{
    NodeId, NodeIdError, Plan as OwnershipPlan, Seen, plan as plan_ownership, rightful,
};
pub use stock::{Reservation, StockBook};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// `products.id`
    ProductId
);
id_type!(
    /// `stores.id`
    StoreId
);
id_type!(
    /// `users.id`; a buyer is a user
    UserId
);
id_type!(
    /// `orders.id`
    OrderId
);
id_type!(
    /// `order_details.id`
    OrderDetailId
);

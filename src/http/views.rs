//! The `data` of the answers, as JSON.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use crate::catalog::{Listing, Product};
use crate::clock::rfc3339;
use crate::db::load::{MovementRow, OrderRow, StoreRow};
use crate::db::owners::{NodeRow, OwnerRow};
use crate::domain::{OrderStatus, UserId};

/// An order's status, as the document describes it (the answers write
/// `OrderStatus::as_str`; this type is only the schema).
#[allow(dead_code)]
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Status {
    Locked,
    Confirmed,
    Cancelled,
    Expired,
}
use crate::store::Placed;

/// What every view of a product shows.
#[derive(Serialize, ToSchema)]
pub(super) struct ProductFields<'a> {
    id: i64,
    product_name: &'a str,
    current_stock: i64,
    store_id: i64,
}

impl<'a> From<&'a Product> for ProductFields<'a> {
    fn from(p: &'a Product) -> Self {
        ProductFields {
            id: p.id.0,
            product_name: &p.name,
            current_stock: p.stock(),
            store_id: p.store.0,
        }
    }
}

/// A product as the listing shows it.
#[derive(Serialize, ToSchema)]
pub struct ProductView<'a> {
    #[serde(flatten)]
    product: ProductFields<'a>,
    store: StoreView<'a>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct StoreView<'a> {
    id: i64,
    store_name: &'a str,
}

impl<'a> From<&'a Product> for ProductView<'a> {
    fn from(p: &'a Product) -> Self {
        ProductView {
            product: ProductFields::from(p),
            store: StoreView {
                id: p.store.0,
                store_name: &p.store_name,
            },
        }
    }
}

/// Where `ProductView` puts the stock, as serialised with a stock of 0. A name or a
/// store's name containing this text is escaped (`\"`), so the key itself is the first
/// match.
const STOCK_GAP: &str = "\"current_stock\":0";

/// Appends a product as `ProductView` serialises it, from its rendered parts and its
/// stock now.
pub fn write_product(out: &mut Vec<u8>, product: &Product) {
    let (before, after) = product.rendered.parts(|| {
        let view = ProductView {
            product: ProductFields {
                current_stock: 0,
                ..ProductFields::from(product)
            },
            ..ProductView::from(product)
        };
        let text = serde_json::to_string(&view).unwrap_or_default();
        let gap = text
            .find(STOCK_GAP)
            .map_or(0, |at| at + STOCK_GAP.len() - 1);
        let rest = text.get(gap + 1..).unwrap_or_default();
        (format!("{}{rest}", &text[..gap]), gap)
    });
    out.extend_from_slice(before.as_bytes());
    out.extend_from_slice(itoa::Buffer::new().format(product.stock()).as_bytes());
    out.extend_from_slice(after.as_bytes());
}

/// Appends `[product, …]`, each as `write_product` writes it.
pub fn write_products<'p>(out: &mut Vec<u8>, products: impl Iterator<Item = &'p Arc<Product>>) {
    out.push(b'[');
    for (i, product) in products.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_product(out, product);
    }
    out.push(b']');
}

/// About how long a product's JSON is, to size an answer's buffer once.
pub const PRODUCT_BYTES: usize = 140;

/// The answer to a lock: release 1's fields, then the hold's.
#[derive(Serialize, ToSchema)]
pub(super) struct LockView<'a> {
    order_id: i64,
    order_details: Vec<DetailView<'a>>,
    #[schema(value_type = Status)]
    status: &'static str,
    /// RFC 3339 UTC; null holds until confirmed or cancelled.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct DetailView<'a> {
    order_detail_id: i64,
    product_id: i64,
    product_name: &'a str,
    quantity: i64,
}

/// An order as `GET /api/v1/order/{id}`, confirm and cancel answer it.
#[derive(Serialize, ToSchema)]
pub(super) struct OrderView<'a> {
    order_id: i64,
    user_id: i64,
    store_id: i64,
    #[schema(value_type = Status)]
    status: &'static str,
    /// RFC 3339 UTC; null holds until confirmed or cancelled.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    order_details: Vec<DetailView<'a>>,
}

/// The answer to a lock that was just placed.
pub fn placed(catalog: &Listing, placed: &Placed) -> Vec<u8> {
    let order_details = placed
        .details
        .iter()
        .map(|(id, line)| DetailView {
            order_detail_id: id.0,
            product_id: line.product.0,
            product_name: catalog.get(line.product).map_or("", |p| p.name.as_str()),
            quantity: line.quantity,
        })
        .collect();
    to_json(&LockView {
        order_id: placed.order_id.0,
        order_details,
        status: OrderStatus::Locked.as_str(),
        expires_at: placed.expires_at.map(rfc3339),
    })
}

/// The answer that lock gave, rendered again from the order as stored (a replay).
pub fn locked(order: &OrderRow) -> Vec<u8> {
    to_json(&LockView {
        order_id: order.id.0,
        order_details: details(order),
        status: OrderStatus::Locked.as_str(),
        expires_at: order.expires_at.map(rfc3339),
    })
}

fn details(order: &OrderRow) -> Vec<DetailView<'_>> {
    order
        .details
        .iter()
        .map(|d| DetailView {
            order_detail_id: d.id.0,
            product_id: d.product.0,
            product_name: &d.product_name,
            quantity: d.quantity,
        })
        .collect()
}

impl<'a> From<&'a OrderRow> for OrderView<'a> {
    fn from(order: &'a OrderRow) -> Self {
        let UserId(user_id) = order.buyer;
        OrderView {
            order_id: order.id.0,
            user_id,
            store_id: order.store.0,
            status: order.status.as_str(),
            expires_at: order.expires_at.map(rfc3339),
            order_details: details(order),
        }
    }
}

pub fn order(order: &OrderRow) -> Vec<u8> {
    to_json(&OrderView::from(order))
}

/// A page of `GET /api/v1/admin/orders`: each order as `GET /api/v1/order/{id}` shows it.
pub fn orders(orders: &[OrderRow]) -> Vec<u8> {
    to_json(&orders.iter().map(OrderView::from).collect::<Vec<_>>())
}

/// A product as every admin answer shows it.
#[derive(Serialize, ToSchema)]
pub struct AdminProductView<'a> {
    #[serde(flatten)]
    product: ProductFields<'a>,
    max_per_customer: Option<i64>,
}

impl<'a> From<&'a Product> for AdminProductView<'a> {
    fn from(p: &'a Product) -> Self {
        AdminProductView {
            product: ProductFields::from(p),
            max_per_customer: p.max_per_customer,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserView<'a> {
    pub id: i64,
    pub name: &'a str,
}

#[derive(Serialize, ToSchema)]
pub struct AdminStoreView<'a> {
    id: i64,
    store_name: &'a str,
    user_id: i64,
}

impl<'a> From<&'a StoreRow> for AdminStoreView<'a> {
    fn from(s: &'a StoreRow) -> Self {
        AdminStoreView {
            id: s.id,
            store_name: &s.store_name,
            user_id: s.user_id,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MovementView<'a> {
    id: i64,
    delta: i64,
    reason: &'a str,
    created_at: String,
}

impl<'a> From<&'a MovementRow> for MovementView<'a> {
    fn from(m: &'a MovementRow) -> Self {
        MovementView {
            id: m.id,
            delta: m.delta,
            reason: &m.reason,
            created_at: rfc3339(m.created_at.and_utc().timestamp()),
        }
    }
}

/// `GET /api/v1/admin/cluster`: the nodes, and who owns which store.
#[derive(Serialize, ToSchema)]
pub struct ClusterView<'a> {
    nodes: Vec<NodeView<'a>>,
    stores: Vec<OwnershipView<'a>>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct NodeView<'a> {
    node_id: &'a str,
    advertise_url: &'a str,
    /// Its last heartbeat, RFC 3339 UTC to the millisecond.
    #[schema(format = DateTime)]
    last_seen: String,
    /// Its heartbeat is younger than the lease, and it has not left.
    live: bool,
    /// Stores it owns under a lease that has not run out.
    stores_owned: usize,
}

#[derive(Serialize, ToSchema)]
pub(super) struct OwnershipView<'a> {
    store_id: i64,
    /// Null while nobody owns it.
    owner: Option<&'a str>,
    /// Rises at every change of owner; 0 before the first (and on SQLite, which has
    /// one process and no fence).
    epoch: i64,
    /// RFC 3339 UTC to the millisecond; null while nobody owns it (and on SQLite).
    #[schema(format = DateTime)]
    lease_expires_at: Option<String>,
}

impl<'a> ClusterView<'a> {
    pub fn new(nodes: &'a [NodeRow], stores: &'a [OwnerRow]) -> Self {
        let millis = |at: &chrono::NaiveDateTime| {
            at.and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let owned = |node: &str| {
            stores
                .iter()
                .filter(|s| !s.lapsed && s.owner.as_deref() == Some(node))
                .count()
        };
        ClusterView {
            nodes: nodes
                .iter()
                .map(|n| NodeView {
                    node_id: &n.node_id,
                    advertise_url: &n.advertise_url,
                    last_seen: millis(&n.last_seen),
                    live: n.live,
                    stores_owned: owned(&n.node_id),
                })
                .collect(),
            stores: stores
                .iter()
                .map(|s| OwnershipView {
                    store_id: s.store.0,
                    owner: s.owner.as_deref(),
                    epoch: s.epoch,
                    lease_expires_at: s.lease_expires_at.as_ref().map(millis),
                })
                .collect(),
        }
    }
}

/// These views hold only strings and integers, which always serialise.
fn to_json(view: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(view).unwrap_or_else(|_| b"null".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::load::ProductRow;

    fn product(name: &str, store_name: &str, stock: i64) -> Product {
        Product::from(ProductRow {
            id: 7,
            product_name: name.into(),
            current_stock: stock,
            store_id: 3,
            store_name: store_name.into(),
            max_per_customer: None,
        })
    }

    #[test]
    fn a_rendered_product_is_what_serde_writes_whatever_its_names_and_stock() {
        let names = [
            "masker",
            r#"x","current_stock":0,"y":""#,
            "\"current_stock\":0",
            "back\\slash \u{1F637} ünï\ncode\t",
            "",
        ];
        for name in names {
            for store_name in ["kitara store", r#""current_stock":0"#] {
                let product = product(name, store_name, 10);
                for stock in [10, 0, 1, i64::from(i32::MAX), 123_456_789_012] {
                    product.stock.publish(stock);
                    let mut out = Vec::new();
                    write_product(&mut out, &product);
                    let want = serde_json::to_vec(&ProductView::from(&product)).unwrap();
                    assert_eq!(
                        String::from_utf8(out).unwrap(),
                        String::from_utf8(want).unwrap()
                    );
                }
            }
        }
    }

    #[test]
    fn a_renamed_copy_is_rendered_afresh_and_lists_join_with_commas() {
        let first = Arc::new(product("old", "s", 1));
        let mut out = Vec::new();
        write_product(&mut out, &first);
        let renamed = Arc::new(Product {
            name: "new".into(),
            ..(*first).clone()
        });
        let mut out = Vec::new();
        write_products(&mut out, [&first, &renamed].into_iter());
        let listed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(listed[0]["product_name"], "old");
        assert_eq!(listed[1]["product_name"], "new");
        let mut empty = Vec::new();
        write_products(&mut empty, std::iter::empty());
        assert_eq!(empty, b"[]");
    }
}

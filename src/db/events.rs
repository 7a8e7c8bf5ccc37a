//! The outbox: every change of a store as an event (SPEC.md, "Every change as an event").
//!
//! A store's actor numbers its events (1, 2, 3, … with no gap, in the order it decided
//! the changes) and hands each to the writer as an `EventDraft` with the write of its
//! change; the writer renders it, once the ids of a new order are known, and inserts
//! it in the transaction of the change. So an event row exists exactly when its change
//! committed. The stream reads history from here, and the webhooks deliver from here.

use bytes::Bytes;
use sea_orm::{ConnectionTrait, DbErr, Value};
use serde::Serialize;
use serde::ser::SerializeMap;

use super::sql::Sql;
use crate::domain::{
    Deadline, OrderDetailId, OrderId, OrderLine, OrderStatus, ProductId, Resolution, StoreId,
    UserId,
};

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    OrderLocked,
    OrderConfirmed,
    OrderCancelled,
    OrderExpired,
    ProductCreated,
    ProductUpdated,
    ProductDeleted,
    StockAdjusted,
}

impl EventKind {
    const ALL: [EventKind; 8] = [
        EventKind::OrderLocked,
        EventKind::OrderConfirmed,
        EventKind::OrderCancelled,
        EventKind::OrderExpired,
        EventKind::ProductCreated,
        EventKind::ProductUpdated,
        EventKind::ProductDeleted,
        EventKind::StockAdjusted,
    ];

    /// Its `type`, as the stream's `event:` line and the event JSON name it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::OrderLocked => "order.locked",
            EventKind::OrderConfirmed => "order.confirmed",
            EventKind::OrderCancelled => "order.cancelled",
            EventKind::OrderExpired => "order.expired",
            EventKind::ProductCreated => "product.created",
            EventKind::ProductUpdated => "product.updated",
            EventKind::ProductDeleted => "product.deleted",
            EventKind::StockAdjusted => "stock.adjusted",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The event of a hold that ended this way.
    pub fn of_end(resolution: Resolution) -> Self {
        match resolution.status() {
            OrderStatus::Confirmed => EventKind::OrderConfirmed,
            OrderStatus::Cancelled => EventKind::OrderCancelled,
            OrderStatus::Expired => EventKind::OrderExpired,
            OrderStatus::Locked => EventKind::OrderLocked,
        }
    }
}

/// A committed event, as the stream sends it and the webhooks POST it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub store: StoreId,
    pub seq: i64,
    pub kind: EventKind,
    /// When its change was decided, Unix milliseconds.
    pub at_ms: i64,
    /// The event's JSON: `{"store_id", "seq", "type", "at", "data"}`, on one line.
    pub body: Bytes,
}

impl Event {
    /// Appends the event as `text/event-stream` sends it: `id:`, `event:` and `data:`
    /// lines and a blank line.
    pub fn write_frame(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(self.seq.to_string().as_bytes());
        out.extend_from_slice(b"\nevent: ");
        out.extend_from_slice(self.kind.as_str().as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(&self.body);
        out.extend_from_slice(b"\n\n");
    }
}

/// An event as the outbox stores it: its `data` alone, the rest being its row's
/// columns and line fields. The envelope is written when it is read or published, not
/// stored: a third fewer bytes per order for the database to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub store: StoreId,
    pub seq: i64,
    pub kind: EventKind,
    /// When its change was decided, Unix milliseconds.
    pub at_ms: i64,
    /// The event's `data`, as JSON.
    pub data: Bytes,
}

impl Stored {
    /// The event with its envelope.
    pub fn event(&self) -> Event {
        let at = chrono::DateTime::from_timestamp_millis(self.at_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut body = Vec::with_capacity(self.data.len() + 96);
        body.extend_from_slice(b"{\"store_id\":");
        body.extend_from_slice(self.store.0.to_string().as_bytes());
        body.extend_from_slice(b",\"seq\":");
        body.extend_from_slice(self.seq.to_string().as_bytes());
        body.extend_from_slice(b",\"type\":\"");
        body.extend_from_slice(self.kind.as_str().as_bytes());
        body.extend_from_slice(b"\",\"at\":\"");
        body.extend_from_slice(at.as_bytes());
        body.extend_from_slice(b"\",\"data\":");
        body.extend_from_slice(&self.data);
        body.push(b'}');
        Event {
            store: self.store,
            seq: self.seq,
            kind: self.kind,
            at_ms: self.at_ms,
            body: Bytes::from(body),
        }
    }
}

/// An event as its store's actor decided it. The writer renders it, with its number in
/// the store's sequence and, for a lock, the ids it gave the order's rows.
#[derive(Debug, Clone)]
pub struct EventDraft {
    pub store: StoreId,
    pub kind: EventKind,
    pub at_ms: i64,
    pub data: EventData,
}

#[derive(Debug, Clone)]
pub enum EventData {
    Order(OrderEvent),
    Product(ProductEvent),
}

/// What an order event shows besides what its write holds (the order's lines, buyer
/// and status).
#[derive(Debug, Clone)]
pub struct OrderEvent {
    pub expires_at: Option<Deadline>,
    /// The ids of its details, one per line; empty for a lock, whose ids the writer
    /// gives.
    pub details: Vec<OrderDetailId>,
    /// Its products' names, one per line.
    pub names: Vec<String>,
    /// Each of its products' stock as the actor left it right after deciding.
    pub stock: Vec<(ProductId, i64)>,
}

/// A product as the admin API shows it, after the change (for a deletion, before).
#[derive(Debug, Clone)]
pub struct ProductEvent {
    /// `None` for a product being created: the database gives its id.
    pub id: Option<ProductId>,
    pub name: String,
    pub current_stock: i64,
    pub max_per_customer: Option<i64>,
    /// A stock adjustment's delta and reason.
    pub adjusted: Option<(i64, String)>,
}

/// The order an order event is about, as its write holds it.
pub struct OrderFacts<'a> {
    pub id: OrderId,
    pub buyer: UserId,
    pub status: OrderStatus,
    pub lines: &'a [OrderLine],
    /// For a lock, the first of its details' consecutive ids.
    pub first_detail: Option<OrderDetailId>,
}

#[derive(Serialize)]
struct OrderData<'a> {
    order_id: i64,
    user_id: i64,
    store_id: i64,
    status: &'static str,
    expires_at: Option<String>,
    order_details: Vec<DetailData<'a>>,
    stock: StockMap<'a>,
}

#[derive(Serialize)]
struct DetailData<'a> {
    order_detail_id: i64,
    product_id: i64,
    product_name: &'a str,
    quantity: i64,
}

/// `{"<product_id>": n}`
struct StockMap<'a>(&'a [(ProductId, i64)]);

impl Serialize for StockMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (product, stock) in self.0 {
            map.serialize_entry(&product.0.to_string(), stock)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct ProductData<'a> {
    id: i64,
    product_name: &'a str,
    current_stock: i64,
    store_id: i64,
    max_per_customer: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl EventDraft {
    /// The event of an order's change.
    pub fn render_order(&self, seq: i64, order: OrderFacts<'_>) -> Stored {
        let EventData::Order(event) = &self.data else {
            return self.render_product(seq, ProductId(0));
        };
        let detail_id = |i: usize| match order.first_detail {
            Some(first) => first.0 + i as i64,
            None => event.details.get(i).map_or(0, |d| d.0),
        };
        let data = OrderData {
            order_id: order.id.0,
            user_id: order.buyer.0,
            store_id: self.store.0,
            status: order.status.as_str(),
            expires_at: event.expires_at.map(crate::clock::rfc3339),
            order_details: order
                .lines
                .iter()
                .enumerate()
                .map(|(i, line)| DetailData {
                    order_detail_id: detail_id(i),
                    product_id: line.product.0,
                    product_name: event.names.get(i).map_or("", String::as_str),
                    quantity: line.quantity,
                })
                .collect(),
            stock: StockMap(&event.stock),
        };
        self.render(seq, data)
    }

    /// The event of a product's change; `created` is the id the database gave a new
    /// product.
    pub fn render_product(&self, seq: i64, created: ProductId) -> Stored {
        let product = match &self.data {
            EventData::Product(product) => product,
            EventData::Order(_) => {
                return self.render(seq, serde_json::Value::Null);
            }
        };
        let data = ProductData {
            id: product.id.unwrap_or(created).0,
            product_name: &product.name,
            current_stock: product.current_stock,
            store_id: self.store.0,
            max_per_customer: product.max_per_customer,
            delta: product.adjusted.as_ref().map(|(delta, _)| *delta),
            reason: product.adjusted.as_ref().map(|(_, reason)| reason.as_str()),
        };
        self.render(seq, data)
    }

    fn render(&self, seq: i64, data: impl Serialize) -> Stored {
        // Plain data of integers and strings: serialising it cannot fail.
        let data = serde_json::to_vec(&data).unwrap_or_default();
        Stored {
            store: self.store,
            seq,
            kind: self.kind,
            at_ms: self.at_ms,
            data: Bytes::from(data),
        }
    }
}

/// An outbox row holds consecutive events of one store, one per line:
/// `<seq> <type> <at_ms> <data JSON>\n` (the JSON never holds a raw newline). A
/// transaction writes one row per run of its store's events, not one per event: at a
/// flash sale's rate, a row per event was a third of the database's work per order. A
/// row is stored LZ4-compressed against `DICTIONARY`: events differ in a few digits and
/// names, and the bytes a transaction sends and logs are what the outbox costs the
/// database (measured: a third of hot's throughput before, a tenth after).
fn encode(events: &[Stored]) -> Vec<u8> {
    let size = events.iter().map(|e| e.data.len() + 48).sum();
    let mut body = Vec::with_capacity(size);
    for event in events {
        body.extend_from_slice(event.seq.to_string().as_bytes());
        body.push(b' ');
        body.extend_from_slice(event.kind.as_str().as_bytes());
        body.push(b' ');
        body.extend_from_slice(event.at_ms.to_string().as_bytes());
        body.push(b' ');
        body.extend_from_slice(&event.data);
        body.push(b'\n');
    }
    let mut row = vec![LZ4_DICTIONARY_1];
    row.extend_from_slice(&lz4_flex::block::compress_prepend_size_with_dict(
        &body, DICTIONARY,
    ));
    row
}

/// The first byte of a row compressed against `DICTIONARY`. The dictionary is part of
/// the stored format: a new one takes a new first byte, and the old one stays readable.
const LZ4_DICTIONARY_1: u8 = 1;

/// What events look like, so that even a row of one event compresses: LZ4 finds the
/// keys and words here instead of in the row.
const DICTIONARY: &[u8] = b"1 product.created 1764644645123 {\"id\":1,\"product_name\":\"\",\"current_stock\":1,\"store_id\":1,\"max_per_customer\":null}\n\
1 stock.adjusted 1764644645123 {\"id\":1,\"product_name\":\"\",\"current_stock\":1,\"store_id\":1,\"max_per_customer\":null,\"delta\":1,\"reason\":\"\"}\n\
1 product.updated 1764644645123 product.deleted order.expired {\"order_id\":1,\"user_id\":1,\"store_id\":1,\"status\":\"expired\",\"expires_at\":\"2026-12-06T00:00:00Z\",\"order_details\":[{\"order_detail_id\":1,\"product_id\":1,\"product_name\":\"\",\"quantity\":1}],\"stock\":{\"1\":1}}\n\
1 order.cancelled 1764644645123 {\"order_id\":1,\"user_id\":1,\"store_id\":1,\"status\":\"cancelled\",\"expires_at\":null,\"order_details\":[{\"order_detail_id\":1,\"product_id\":1,\"product_name\":\"\",\"quantity\":1}],\"stock\":{\"1\":1}}\n\
1 order.confirmed 1764644645123 {\"order_id\":1,\"user_id\":1,\"store_id\":1,\"status\":\"confirmed\",\"expires_at\":null,\"order_details\":[{\"order_detail_id\":1,\"product_id\":1,\"product_name\":\"\",\"quantity\":1}],\"stock\":{\"1\":1}}\n\
1 order.locked 1764644645123 {\"order_id\":1,\"user_id\":1,\"store_id\":1,\"status\":\"locked\",\"expires_at\":null,\"order_details\":[{\"order_detail_id\":1,\"product_id\":1,\"product_name\":\"\",\"quantity\":1}],\"stock\":{\"1\":1}}\n";

/// The events of one outbox row.
fn decode(store: StoreId, row: &[u8]) -> Result<Vec<Event>, DbErr> {
    let bad = || DbErr::Custom(format!("an outbox row of store {store} is malformed"));
    let row = match row.split_first() {
        Some((&LZ4_DICTIONARY_1, compressed)) => {
            lz4_flex::block::decompress_size_prepended_with_dict(compressed, DICTIONARY)
                .map_err(|_| bad())?
        }
        _ => return Err(bad()),
    };
    let mut events = Vec::new();
    for line in row.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").ok_or_else(bad)?;
        let mut fields = line.splitn(4, |&b| b == b' ');
        let mut next = || fields.next().ok_or_else(bad);
        let text = |field: &[u8]| {
            std::str::from_utf8(field)
                .map_err(|_| bad())
                .map(str::to_owned)
        };
        let seq = text(next()?)?.parse().map_err(|_| bad())?;
        let kind = EventKind::parse(&text(next()?)?).ok_or_else(bad)?;
        let at_ms = text(next()?)?.parse().map_err(|_| bad())?;
        let data = Bytes::copy_from_slice(next()?);
        let stored = Stored {
            store,
            seq,
            kind,
            at_ms,
            data,
        };
        events.push(stored.event());
    }
    Ok(events)
}

/// The runs of consecutive events of one store in `events` (sorted by store and seq).
fn runs(events: &[Stored]) -> impl Iterator<Item = &[Stored]> {
    events.chunk_by(|a, b| a.store == b.store && a.seq + 1 == b.seq)
}

/// The insert of `events` (sorted by store and seq), for a batch's multi-statement
/// request: a row per run of a store's consecutive events, each body as a hexadecimal
/// literal, so nothing of it is read as SQL.
pub(crate) fn insert(sql: &mut Sql, events: &[Stored]) -> u64 {
    sql.text("INSERT INTO kitara_events (store_id, seq, last_seq, at_ms, body) VALUES ");
    let mut rows = 0;
    for run in runs(events) {
        let (first, last) = (&run[0], &run[run.len() - 1]);
        sql.text(if rows == 0 { "(" } else { ", (" })
            .list([first.store.0, first.seq, last.seq, last.at_ms])
            .text(", ")
            .bytes(&encode(run))
            .text(")");
        rows += 1;
    }
    rows
}

/// Inserts one event with bound values (an admin write's, in its transaction).
pub(crate) async fn insert_one(db: &impl ConnectionTrait, event: &Stored) -> Result<(), DbErr> {
    let sql =
        "INSERT INTO kitara_events (store_id, seq, last_seq, at_ms, body) VALUES (?, ?, ?, ?, ?)";
    let values = [
        Value::from(event.store.0),
        Value::from(event.seq),
        Value::from(event.seq),
        Value::from(event.at_ms),
        Value::from(encode(std::slice::from_ref(event))),
    ];
    db.execute_raw(super::prepared(db, sql, values)).await?;
    Ok(())
}

/// The last event of each store that has any (or of `only`): where its actor goes on
/// numbering.
pub async fn last_seqs(
    db: &impl ConnectionTrait,
    only: Option<StoreId>,
) -> Result<Vec<(StoreId, i64)>, DbErr> {
    // The row of each store's greatest `seq` holds its last event: found through the
    // index on (store_id, seq), not by reading every row.
    let (sql, values) = match only {
        Some(store) => (
            "SELECT store_id, last_seq FROM kitara_events WHERE store_id = ? ORDER BY seq DESC LIMIT 1",
            vec![Value::from(store.0)],
        ),
        None => (
            "SELECT e.store_id, e.last_seq FROM kitara_events e JOIN \
             (SELECT store_id, MAX(seq) AS seq FROM kitara_events GROUP BY store_id) m \
             ON m.store_id = e.store_id AND m.seq = e.seq",
            Vec::new(),
        ),
    };
    let rows = db.query_all_raw(super::prepared(db, sql, values)).await?;
    rows.iter()
        .map(|row| Ok((StoreId(row.try_get_by_index(0)?), row.try_get_by_index(1)?)))
        .collect()
}

/// The events of `store` after `after`, in order, from at most `rows` outbox rows.
pub async fn after(
    db: &impl ConnectionTrait,
    store: StoreId,
    after: i64,
    rows: u32,
) -> Result<Vec<Event>, DbErr> {
    // From the row that holds event `after + 1` (the last one that starts at or before
    // it), through the index on (store_id, seq): never a scan from the oldest row.
    let sql = "SELECT body FROM kitara_events WHERE store_id = ? AND last_seq > ? AND seq >= \
               COALESCE((SELECT MAX(seq) FROM kitara_events WHERE store_id = ? AND seq <= ?), 0) \
               ORDER BY seq LIMIT ?";
    let values = [
        Value::from(store.0),
        Value::from(after),
        Value::from(store.0),
        Value::from(after + 1),
        Value::from(rows),
    ];
    let mut events = Vec::new();
    for row in db.query_all_raw(super::prepared(db, sql, values)).await? {
        let body: Vec<u8> = row.try_get_by_index(0)?;
        events.extend(decode(store, &body)?.into_iter().filter(|e| e.seq > after));
    }
    Ok(events)
}

/// The first event of `store` still kept, if it has any.
pub async fn first_kept(db: &impl ConnectionTrait, store: StoreId) -> Result<Option<i64>, DbErr> {
    let sql = "SELECT MIN(seq) FROM kitara_events WHERE store_id = ?";
    let row = db
        .query_one_raw(super::prepared(db, sql, [Value::from(store.0)]))
        .await?;
    match row {
        Some(row) => row.try_get_by_index::<Option<i64>>(0),
        None => Ok(None),
    }
}

/// The last event of `store` the webhook endpoint acknowledged (0: none yet).
pub async fn delivered(db: &impl ConnectionTrait, store: StoreId) -> Result<i64, DbErr> {
    let sql = "SELECT delivered FROM kitara_webhook_positions WHERE store_id = ?";
    let row = db
        .query_one_raw(super::prepared(db, sql, [Value::from(store.0)]))
        .await?;
    row.map_or(Ok(0), |row| row.try_get_by_index(0))
}

/// Stores that the endpoint acknowledged `store`'s events up to `position`. A position
/// never goes back: a node that lost the store and stores late changes nothing.
pub async fn set_delivered(
    db: &impl ConnectionTrait,
    store: StoreId,
    position: i64,
) -> Result<(), DbErr> {
    let sql = match db.get_database_backend() {
        sea_orm::DbBackend::MySql => {
            "INSERT INTO kitara_webhook_positions (store_id, delivered) VALUES (?, ?)              ON DUPLICATE KEY UPDATE delivered = GREATEST(delivered, VALUES(delivered))"
        }
        _ => {
            "INSERT INTO kitara_webhook_positions (store_id, delivered) VALUES (?, ?)              ON CONFLICT (store_id) DO UPDATE SET delivered = MAX(delivered, excluded.delivered)"
        }
    };
    let values = [Value::from(store.0), Value::from(position)];
    db.execute_raw(super::prepared(db, sql, values)).await?;
    Ok(())
}

/// Outbox rows deleted per statement of the purge.
const PURGE_CHUNK: i64 = 1_000;

/// One step of the purge: deletes outbox rows decided before `before_ms` of the first
/// store from `from` on that has any, up to `PURGE_CHUNK` of its events at a time, never
/// the row of a store's last event (its actor numbers on from it after a restart).
/// Answers how many rows were deleted and where the next step starts (`None` once every
/// store was swept).
pub async fn purge_step(
    db: &impl ConnectionTrait,
    before_ms: i64,
    from: StoreId,
) -> Result<(u64, Option<StoreId>), DbErr> {
    let sql = "SELECT store_id, MIN(seq), MAX(seq) FROM kitara_events WHERE store_id >= ? \
               GROUP BY store_id ORDER BY store_id LIMIT 1";
    let Some(row) = db
        .query_one_raw(super::prepared(db, sql, [Value::from(from.0)]))
        .await?
    else {
        return Ok((0, None));
    };
    let store: i64 = row.try_get_by_index(0)?;
    let first: i64 = row.try_get_by_index(1)?;
    // The first event of the store's last row: that row stays.
    let last_row: i64 = row.try_get_by_index(2)?;
    let below = last_row.min(first + PURGE_CHUNK);
    let sql = "DELETE FROM kitara_events WHERE store_id = ? AND seq >= ? AND seq < ? AND at_ms < ?";
    let values = [
        Value::from(store),
        Value::from(first),
        Value::from(below),
        Value::from(before_ms),
    ];
    let deleted = db
        .execute_raw(super::prepared(db, sql, values))
        .await?
        .rows_affected();
    // Rows left below this chunk's end mean a younger one stopped it: the store is done.
    // Otherwise the next chunk of the same store, if any is left.
    let next = if below < last_row && deleted > 0 {
        store
    } else {
        store + 1
    };
    Ok((deleted, Some(StoreId(next))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(data: EventData, kind: EventKind) -> EventDraft {
        EventDraft {
            store: StoreId(7),
            kind,
            at_ms: 1_764_644_645_123,
            data,
        }
    }

    #[test]
    fn an_order_event_is_the_order_as_shown_with_its_products_stock() {
        let lines = [
            OrderLine {
                product: ProductId(1),
                quantity: 2,
            },
            OrderLine {
                product: ProductId(4),
                quantity: 1,
            },
        ];
        let event = draft(
            EventData::Order(OrderEvent {
                expires_at: Some(1_764_644_700),
                details: Vec::new(),
                names: vec!["Tea \"green\"".into(), "Cup".into()],
                stock: vec![(ProductId(1), 8), (ProductId(4), 0)],
            }),
            EventKind::OrderLocked,
        )
        .render_order(
            3,
            OrderFacts {
                id: OrderId(11),
                buyer: UserId(5),
                status: OrderStatus::Locked,
                lines: &lines,
                first_detail: Some(OrderDetailId(20)),
            },
        );
        assert_eq!(
            std::str::from_utf8(&event.event().body).unwrap(),
            r#"{"store_id":7,"seq":3,"type":"order.locked","at":"2025-12-02T03:04:05.123Z","data":{"order_id":11,"user_id":5,"store_id":7,"status":"locked","expires_at":"2025-12-02T03:05:00Z","order_details":[{"order_detail_id":20,"product_id":1,"product_name":"Tea \"green\"","quantity":2},{"order_detail_id":21,"product_id":4,"product_name":"Cup","quantity":1}],"stock":{"1":8,"4":0}}}"#
        );
        assert_eq!((event.store, event.seq), (StoreId(7), 3));
    }

    #[test]
    fn a_stock_adjustment_shows_the_product_with_its_delta_and_reason() {
        let event = draft(
            EventData::Product(ProductEvent {
                id: None,
                name: "Tea".into(),
                current_stock: 12,
                max_per_customer: None,
                adjusted: Some((-3, "broken".into())),
            }),
            EventKind::StockAdjusted,
        )
        .render_product(3, ProductId(9));
        let json: serde_json::Value = serde_json::from_slice(&event.event().body).unwrap();
        assert_eq!(json["type"], "stock.adjusted");
        assert_eq!(
            json["data"],
            serde_json::json!({"id": 9, "product_name": "Tea", "current_stock": 12, "store_id": 7,
                "max_per_customer": null, "delta": -3, "reason": "broken"})
        );
    }

    #[test]
    fn an_outbox_row_reads_back_as_its_events() {
        let stored = |seq: i64, data: &str| Stored {
            store: StoreId(2),
            seq,
            kind: EventKind::OrderLocked,
            at_ms: 1_764_644_645_123 + seq,
            data: Bytes::from(data.to_owned()),
        };
        for count in [1, 2, 50] {
            let run: Vec<Stored> = (1..=count as i64)
                .map(|seq| stored(seq, r#"{"name":"a b\\n","n":1}"#))
                .collect();
            let row = encode(&run);
            assert_eq!(row[0], LZ4_DICTIONARY_1);
            let events: Vec<Event> = run.iter().map(Stored::event).collect();
            assert_eq!(decode(StoreId(2), &row).unwrap(), events);
        }
        assert_eq!(
            std::str::from_utf8(&stored(3, "{}").event().body).unwrap(),
            r#"{"store_id":2,"seq":3,"type":"order.locked","at":"2025-12-02T03:04:05.126Z","data":{}}"#
        );
        let compressed = |plain: &[u8]| {
            let mut row = vec![LZ4_DICTIONARY_1];
            row.extend(lz4_flex::block::compress_prepend_size_with_dict(
                plain, DICTIONARY,
            ));
            row
        };
        assert!(decode(StoreId(2), &compressed(b"4 order.locked 1 {}")).is_err());
        assert!(decode(StoreId(2), &compressed(b"x order.locked 1 {}\n")).is_err());
        assert!(
            decode(StoreId(2), b"4 order.locked 1 {}\n").is_err(),
            "not compressed"
        );
        assert!(decode(StoreId(2), &[LZ4_DICTIONARY_1, 9, 9]).is_err());
        let mut sql = Sql::new("");
        let split = vec![stored(4, "{}"), stored(5, "{}"), stored(7, "{}")];
        assert_eq!(
            insert(&mut sql, &split),
            2,
            "a gap in the numbers starts a row"
        );
    }

    #[test]
    fn a_lone_order_event_compresses_to_a_fraction_of_its_json() {
        let data = br#"{"order_id":123456,"user_id":77,"store_id":812,"status":"locked","expires_at":null,"order_details":[{"order_detail_id":123460,"product_id":8121,"product_name":"product 8121","quantity":2}],"stock":{"8121":999812}}"#;
        let event = Stored {
            store: StoreId(812),
            seq: 4021,
            kind: EventKind::OrderLocked,
            at_ms: 1_764_644_645_123,
            data: Bytes::from_static(data),
        };
        let row = encode(std::slice::from_ref(&event));
        assert!(
            row.len() * 2 < data.len(),
            "{} bytes for {}",
            row.len(),
            data.len()
        );
        assert_eq!(decode(StoreId(812), &row).unwrap(), vec![event.event()]);
    }

    #[test]
    fn every_kind_reads_back_as_itself() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("order"), None);
    }
}

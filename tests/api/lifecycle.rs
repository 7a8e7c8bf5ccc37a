//! A proptest state machine over the life of orders: lock (with holds, keys and a
//! per-customer limit), confirm, cancel, time passing, a restock by SQL followed by a
//! restart, and a plain restart. Every step runs against a real Kitara and is checked
//! against a plain reference model of stock, holds, limits and keys: the answer, `GET`
//! of every order, the listing, and SPEC.md's invariant in SQL.
//!
//! Time is a manual clock that moves only in the "time passes" step, so expiry is
//! exact. `KITARA_PROPTEST_CASES` sets the number of cases (default 16 per backend).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hyper::StatusCode;
use kitara::clock::{Clock, rfc3339};
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestDb, manual_clock, spawn_app_at};

/// Products of the fixture: id → (store, name, initial stock, limit per customer).
const PRODUCTS: [(i64, i64, &str, i64, Option<i64>); 3] = [
    (1, 1, "masker", 6, Some(3)),
    (2, 1, "sikat gigi", 4, None),
    (3, 2, "sabun", 5, None),
];
/// Known users; 9 is not one.
const USERS: [i64; 3] = [1, 2, 3];
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
/// An order index the model never reaches, for "no such order".
const MISSING: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Locked,
    Confirmed,
    Cancelled,
    Expired,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Locked => "locked",
            Status::Confirmed => "confirmed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelOrder {
    buyer: i64,
    store: i64,
    lines: BTreeMap<i64, i64>,
    status: Status,
    /// Seconds from the clock's start.
    expires_at: Option<i64>,
}

/// What a key is bound to: the request, as Kitara fingerprints it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    Lock {
        user: i64,
        lines: BTreeMap<i64, i64>,
        hold: Option<i64>,
    },
    End {
        confirm: bool,
        order: usize,
        user: i64,
    },
}

/// What the model expects of one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// 200 placing order number `n` of the model.
    Placed(usize),
    /// 200 with order `n` as it is now (a change, or a harmless repeat).
    Order(usize),
    /// The first answer the key got, again, with `Idempotent-Replayed: true`.
    Replay(&'static str),
    Refused(StatusCode, String),
    /// Steps without an answer of their own.
    Nothing,
}

#[derive(Debug, Clone)]
struct Model {
    now: i64,
    stock: BTreeMap<i64, i64>,
    restocked: BTreeMap<i64, i64>,
    orders: Vec<ModelOrder>,
    keys: HashMap<&'static str, Request>,
    /// What the last step should have answered.
    expect: Expect,
}

#[derive(Debug, Clone)]
enum Step {
    Lock {
        user: i64,
        lines: Vec<(i64, i64)>,
        hold: Option<i64>,
        key: Option<&'static str>,
    },
    End {
        confirm: bool,
        order: usize,
        user: i64,
        key: Option<&'static str>,
    },
    TimePasses(i64),
    RestockBySqlAndRestart {
        product: i64,
        units: i64,
    },
    Restart,
}

/// Duplicate lines of a product merged, as Kitara merges them.
fn merge(lines: &[(i64, i64)]) -> BTreeMap<i64, i64> {
    let mut merged = BTreeMap::new();
    for &(p, q) in lines {
        *merged.entry(p).or_insert(0) += q;
    }
    merged
}

fn product(id: i64) -> Option<(i64, i64, &'static str, i64, Option<i64>)> {
    PRODUCTS.iter().copied().find(|p| p.0 == id)
}

impl Model {
    fn lock(&mut self, user: i64, lines: &[(i64, i64)], hold: Option<i64>) -> Expect {
        let refuse = |m: &str| Expect::Refused(StatusCode::BAD_REQUEST, m.to_owned());
        if !USERS.contains(&user) {
            return refuse("user not found");
        }
        let merged = merge(lines);
        let stores: std::collections::BTreeSet<i64> = merged
            .keys()
            .filter_map(|&p| product(p))
            .map(|p| p.1)
            .collect();
        if stores.len() > 1 {
            return refuse("product must in same store");
        }
        let Some(&store) = stores.first() else {
            return refuse("all product not available");
        };
        for (&p, &q) in &merged {
            if let Some(limit) = product(p).and_then(|p| p.4) {
                let held: i64 = self
                    .orders
                    .iter()
                    .filter(|o| {
                        o.buyer == user && matches!(o.status, Status::Locked | Status::Confirmed)
                    })
                    .filter_map(|o| o.lines.get(&p))
                    .sum();
                if held + q > limit {
                    return refuse("purchase limit per customer exceeded");
                }
            }
        }
        let servable = merged
            .iter()
            .filter(|(p, q)| self.stock.get(p).is_some_and(|s| s >= q))
            .count();
        if servable < merged.len() {
            return refuse(if servable == 0 {
                "all product not available"
            } else {
                "some product not available"
            });
        }
        for (p, q) in &merged {
            *self.stock.get_mut(p).unwrap() -= q;
        }
        self.orders.push(ModelOrder {
            buyer: user,
            store,
            lines: merged,
            status: Status::Locked,
            expires_at: hold.map(|h| self.now + h),
        });
        Expect::Placed(self.orders.len() - 1)
    }

    fn end(&mut self, confirm: bool, index: usize, user: i64) -> (Expect, bool) {
        let Some(order) = self.orders.get_mut(index).filter(|o| o.buyer == user) else {
            return (
                Expect::Refused(StatusCode::NOT_FOUND, "order not found".into()),
                false,
            );
        };
        let target = if confirm {
            Status::Confirmed
        } else {
            Status::Cancelled
        };
        match order.status {
            Status::Locked => {
                order.status = target;
                if !confirm {
                    for (p, q) in &order.lines {
                        *self.stock.get_mut(p).unwrap() += q;
                    }
                }
                (Expect::Order(index), true)
            }
            s if s == target => (Expect::Order(index), false),
            s => (
                Expect::Refused(StatusCode::CONFLICT, format!("order is {}", s.as_str())),
                false,
            ),
        }
    }

    fn pass(&mut self, seconds: i64) {
        self.now += seconds;
        for order in &mut self.orders {
            if order.status == Status::Locked && order.expires_at.is_some_and(|at| at <= self.now) {
                order.status = Status::Expired;
                for (p, q) in &order.lines {
                    *self.stock.get_mut(p).unwrap() += q;
                }
            }
        }
    }

    /// A keyed request: the stored answer if the key is bound to this very request, a
    /// 422 if to another, otherwise judged afresh (and bound, if it changed something).
    fn keyed(
        &mut self,
        key: Option<&'static str>,
        request: Request,
        judge: impl FnOnce(&mut Self) -> (Expect, bool),
    ) -> Expect {
        if let Some(key) = key {
            match self.keys.get(key) {
                Some(bound) if *bound == request => return Expect::Replay(key),
                Some(_) => {
                    return Expect::Refused(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Idempotency-Key reused with a different request".into(),
                    );
                }
                None => {}
            }
        }
        let (expect, changed) = judge(self);
        if let Some(key) = key
            && changed
        {
            self.keys.insert(key, request);
        }
        expect
    }
}

impl ReferenceStateMachine for Model {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            now: 0,
            stock: PRODUCTS.iter().map(|p| (p.0, p.3)).collect(),
            restocked: BTreeMap::new(),
            orders: Vec::new(),
            keys: HashMap::new(),
            expect: Expect::Nothing,
        })
        .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Step> {
        let user = prop_oneof![8 => prop::sample::select(&USERS[..]), 1 => Just(9i64)];
        let key = prop_oneof![2 => Just(None), 1 => prop::sample::select(&KEYS[..]).prop_map(Some)];
        let line = (1i64..=4, 1i64..=3);
        let order = match state.orders.len() {
            0 => Just(MISSING).boxed(),
            n => prop_oneof![6 => 0..n, 1 => Just(MISSING)].boxed(),
        };
        let lock = (
            user.clone(),
            prop::collection::vec(line, 1..=2),
            prop::option::of(1i64..=30),
            key.clone(),
        )
            .prop_map(|(user, lines, hold, key)| Step::Lock {
                user,
                lines,
                hold,
                key,
            });
        let end = (any::<bool>(), order, user, key).prop_map(|(confirm, order, user, key)| {
            Step::End {
                confirm,
                order,
                // Mostly the buyer; sometimes someone else.
                user: if user == 9 { 1 } else { user },
                key,
            }
        });
        // Time passes by some seconds, or to exactly the next deadline, or to just
        // before it: the edges of expiry.
        let next_deadline = state
            .orders
            .iter()
            .filter(|o| o.status == Status::Locked)
            .filter_map(|o| o.expires_at)
            .min()
            .map(|at| at - state.now);
        let time = match next_deadline {
            Some(d) if d > 1 => prop_oneof![
                2 => 1i64..=40,
                2 => Just(d),
                1 => Just(d - 1),
            ]
            .boxed(),
            Some(d) => prop_oneof![1 => 1i64..=40, 1 => Just(d.max(1))].boxed(),
            None => (1i64..=40).boxed(),
        };
        prop_oneof![
            6 => lock,
            5 => end,
            3 => time.prop_map(Step::TimePasses),
            1 => (1i64..=3, 1i64..=4).prop_map(|(product, units)| Step::RestockBySqlAndRestart { product, units }),
            1 => Just(Step::Restart),
        ]
        .boxed()
    }

    fn apply(mut state: Model, step: &Step) -> Model {
        state.expect = match step {
            Step::Lock {
                user,
                lines,
                hold,
                key,
            } => {
                let request = Request::Lock {
                    user: *user,
                    lines: merge(lines),
                    hold: *hold,
                };
                state.keyed(*key, request, |m| {
                    let expect = m.lock(*user, lines, *hold);
                    let placed = matches!(expect, Expect::Placed(_));
                    (expect, placed)
                })
            }
            Step::End {
                confirm,
                order,
                user,
                key,
            } => {
                let request = Request::End {
                    confirm: *confirm,
                    order: *order,
                    user: *user,
                };
                state.keyed(*key, request, |m| m.end(*confirm, *order, *user))
            }
            Step::TimePasses(seconds) => {
                state.pass(*seconds);
                Expect::Nothing
            }
            Step::RestockBySqlAndRestart { product, units } => {
                *state.stock.get_mut(product).unwrap() += units;
                *state.restocked.entry(*product).or_insert(0) += units;
                Expect::Nothing
            }
            Step::Restart => Expect::Nothing,
        };
        state
    }
}

/// The backend a machine runs on, as a type (`prop_state_machine!` takes types).
trait OnBackend: 'static {
    const BACKEND: Backend;
}
struct OnSqlite;
struct OnMysql;
impl OnBackend for OnSqlite {
    const BACKEND: Backend = Backend::Sqlite;
}
impl OnBackend for OnMysql {
    const BACKEND: Backend = Backend::Mysql;
}

/// Kitara in-process on its own runtime, and what the test learnt of it.
struct Kitara {
    runtime: tokio::runtime::Runtime,
    sut: Sut,
}

struct Sut {
    db: Option<TestDb>,
    app: Option<TestApp>,
    clock: Clock,
    start: i64,
    /// The real id of each order of the model.
    ids: Vec<i64>,
    /// The first answer each key got.
    answers: HashMap<&'static str, Value>,
}

struct Machine<B>(std::marker::PhantomData<B>);

impl<B: OnBackend> StateMachineTest for Machine<B> {
    type SystemUnderTest = Kitara;
    type Reference = Model;

    fn init_test(_: &Model) -> Kitara {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let clock = manual_clock();
        let start = clock.now().timestamp();
        let (db, app) = runtime.block_on(async {
            let db = TestDb::with_demo_data(B::BACKEND).await;
            for (id, _, _, stock, limit) in PRODUCTS {
                let limit = limit.map_or("NULL".to_owned(), |l| l.to_string());
                db.exec(&format!(
                    "UPDATE products SET current_stock = {stock}, max_per_customer = {limit} WHERE id = {id}"
                ))
                .await;
            }
            let app = spawn_app_at(&db, clock.clone(), |_| {}).await;
            (db, app)
        });
        Kitara {
            runtime,
            sut: Sut {
                db: Some(db),
                app: Some(app),
                clock,
                start,
                ids: Vec::new(),
                answers: HashMap::new(),
            },
        }
    }

    fn apply(mut kitara: Kitara, model: &Model, step: Step) -> Kitara {
        kitara.runtime.block_on(kitara.sut.step(model, step));
        kitara
    }

    fn check_invariants(kitara: &Kitara, model: &Model) {
        kitara.runtime.block_on(kitara.sut.check(model));
    }

    fn teardown(mut kitara: Kitara, _: Model) {
        let (app, db) = (kitara.sut.app.take(), kitara.sut.db.take());
        kitara.runtime.block_on(async {
            if let Some(app) = app {
                app.stop().await;
            }
            if let Some(db) = db {
                db.drop_database().await;
            }
        });
    }
}

impl Sut {
    fn app(&self) -> &TestApp {
        self.app.as_ref().expect("running")
    }

    fn db(&self) -> &TestDb {
        self.db.as_ref().expect("database")
    }

    fn real_id(&self, index: usize) -> i64 {
        self.ids
            .get(index)
            .copied()
            .unwrap_or(9_000_000 + index as i64)
    }

    async fn restart(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
        self.app = Some(spawn_app_at(self.db(), self.clock.clone(), |_| {}).await);
    }

    async fn step(&mut self, model: &Model, step: Step) {
        let (status, headers, body, key) = match step {
            Step::Lock {
                user,
                lines,
                hold,
                key,
            } => {
                let mut body = json!({
                    "user_id": user,
                    "products": lines.iter().map(|&(p, q)| json!({"product_id": p, "quantity": q})).collect::<Vec<_>>(),
                });
                if let Some(hold) = hold {
                    body["hold_seconds"] = json!(hold);
                }
                let (status, headers, answer) =
                    self.app().post("/api/v1/order/lock", &body, key).await;
                (status, headers, answer, key)
            }
            Step::End {
                confirm,
                order,
                user,
                key,
            } => {
                let path = format!(
                    "/api/v1/order/{}/{}",
                    self.real_id(order),
                    if confirm { "confirm" } else { "cancel" }
                );
                let (status, headers, answer) =
                    self.app().post(&path, &json!({"user_id": user}), key).await;
                (status, headers, answer, key)
            }
            Step::TimePasses(seconds) => {
                self.app()
                    .advance(Duration::from_secs(seconds as u64))
                    .await;
                return;
            }
            Step::RestockBySqlAndRestart { product, units } => {
                self.db()
                    .exec(&format!(
                        "UPDATE products SET current_stock = current_stock + {units} WHERE id = {product}"
                    ))
                    .await;
                self.restart().await;
                return;
            }
            Step::Restart => {
                self.restart().await;
                return;
            }
        };
        let replayed = headers.get("idempotent-replayed").is_some();
        match &model.expect {
            Expect::Placed(index) => {
                assert_eq!(status, StatusCode::OK, "{body}");
                assert!(!replayed);
                assert_eq!(
                    *index,
                    self.ids.len(),
                    "orders are placed in the model's order"
                );
                let id = body["data"]["order_id"].as_i64().expect("order_id");
                self.ids.push(id);
                self.assert_order_data(&body["data"], model, *index, true);
                self.db()
                    .assert_order_stored(&body, model.orders[*index].buyer)
                    .await;
            }
            Expect::Order(index) => {
                assert_eq!(status, StatusCode::OK, "{body}");
                assert!(!replayed);
                self.assert_order_data(&body["data"], model, *index, false);
            }
            Expect::Replay(key) => {
                assert_eq!(status, StatusCode::OK, "{body}");
                assert!(replayed, "a replay says so");
                assert_eq!(
                    body["data"], self.answers[key]["data"],
                    "the first answer again"
                );
            }
            Expect::Refused(expected, message) => {
                assert_eq!(status, *expected, "{body}");
                assert_eq!(body["message"], message.as_str(), "{body}");
                assert!(!replayed);
            }
            Expect::Nothing => unreachable!("steps with answers expect one"),
        }
        if let Some(key) = key
            && model.keys.contains_key(key)
            && !self.answers.contains_key(key)
        {
            self.answers.insert(key, body);
        }
    }

    /// The `data` of a lock answer (`lock`) or of an order answer.
    fn assert_order_data(&self, data: &Value, model: &Model, index: usize, lock: bool) {
        let order = &model.orders[index];
        assert_eq!(data["order_id"], self.real_id(index));
        assert_eq!(
            data["status"],
            if lock {
                "locked"
            } else {
                order.status.as_str()
            }
        );
        let expires_at = order.expires_at.map(|at| rfc3339(self.start + at));
        assert_eq!(data["expires_at"], json!(expires_at), "{data}");
        if !lock {
            assert_eq!(data["user_id"], order.buyer);
            assert_eq!(data["store_id"], order.store);
        }
        let lines: BTreeMap<i64, i64> = data["order_details"]
            .as_array()
            .expect("order_details")
            .iter()
            .map(|d| {
                let product = d["product_id"].as_i64().unwrap();
                assert_eq!(d["product_name"], product_name(product));
                (product, d["quantity"].as_i64().unwrap())
            })
            .collect();
        assert_eq!(lines, order.lines, "{data}");
    }

    async fn check(&self, model: &Model) {
        for index in 0..model.orders.len() {
            let (status, body) = self.app().get_order(self.real_id(index)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            self.assert_order_data(&body["data"], model, index, false);
        }
        let listed = self.app().listed_stocks().await;
        assert_eq!(listed, model.stock, "the listing");
        let db = self.db();
        assert_eq!(db.stocks().await, model.stock, "current_stock");
        // SPEC.md: initial stock + restocks = current_stock + the lines of orders that
        // are locked or confirmed.
        let held = db.held_or_sold().await;
        for (id, _, _, initial, _) in PRODUCTS {
            let restocked = model.restocked.get(&id).copied().unwrap_or(0);
            let now = db.stocks().await[&id];
            assert_eq!(
                initial + restocked,
                now + held.get(&id).copied().unwrap_or(0),
                "product {id}"
            );
        }
        assert_eq!(db.count("orders").await as usize, model.orders.len());
    }
}

fn product_name(id: i64) -> &'static str {
    product(id).map_or("", |p| p.2)
}

fn config() -> Config {
    let cases = std::env::var("KITARA_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    Config {
        cases,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    }
}

mod sqlite {
    use super::*;

    proptest_state_machine::prop_state_machine! {
        #![proptest_config(config())]
        #[test]
        fn the_life_of_orders_follows_the_model(sequential 1..30 => Machine<OnSqlite>);
    }
}

mod mysql {
    use super::*;

    #[test]
    fn the_life_of_orders_follows_the_model() {
        if Backend::Mysql.available() {
            run_mysql();
        }
    }

    proptest_state_machine::prop_state_machine! {
        #![proptest_config(config())]
        fn run_mysql(sequential 1..30 => Machine<OnMysql>);
    }
}

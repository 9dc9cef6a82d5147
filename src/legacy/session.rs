//! One legacy connection's state: its attributes and its open transaction,
//! and what each command does with them (docs/api.md "Legacy line
//! protocol").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::backend::{Backend, SearchOptions};
use super::command::{self, Command, ParseError};

/// A reply line, without its `\r\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(String),
    Err(String),
}

impl Reply {
    fn ok() -> Reply {
        Reply::Ok(String::new())
    }

    fn err(message: impl Into<String>) -> Reply {
        Reply::Err(message.into())
    }

    /// `OK <payload>` or `ERR <message>`, with the protocol's `\r\n`.
    pub fn line(&self) -> String {
        match self {
            Reply::Ok(payload) => format!("OK {payload}\r\n"),
            Reply::Err(message) => format!("ERR {message}\r\n"),
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Ok(_))
    }
}

/// How large a transaction may grow: it is applied as one `_update`, so it
/// must fit one request (docs/api.md, "Limits").
#[derive(Debug, Clone, Copy)]
pub struct TransactionLimits {
    pub max_changes: usize,
    pub max_hashes: usize,
    pub max_body_bytes: usize,
    /// What the open transactions of every connection may hold together
    /// (their `bytes`), so connections cannot add up to more memory than
    /// this whatever their number.
    pub max_buffered_bytes: usize,
}

/// The `bytes` of every open transaction of one legacy server's sessions
/// (shared by them; `legacy::serve` makes it).
pub type Buffered = Arc<AtomicUsize>;

#[derive(Debug)]
struct Transaction {
    /// Buffered inserts; a later insert of an id replaces an earlier one.
    inserts: BTreeMap<u32, Vec<u32>>,
    attributes: BTreeMap<String, String>,
    /// What the `_update` body will weigh at most (MessagePack), counted in
    /// `buffered` until the transaction ends.
    bytes: usize,
    buffered: Buffered,
}

impl Transaction {
    /// An empty transaction: the body's own keys counted from the start
    /// (in `buffered` too, whatever it holds: 64 bytes a connection).
    fn new(buffered: &Buffered) -> Transaction {
        buffered.fetch_add(BODY_OVERHEAD, Ordering::AcqRel);
        Transaction {
            inserts: BTreeMap::new(),
            attributes: BTreeMap::new(),
            bytes: BODY_OVERHEAD,
            buffered: buffered.clone(),
        }
    }

    /// Takes `weight` more bytes if both this transaction and all of them
    /// together stay within their limits.
    fn reserve(&mut self, weight: usize, limits: &TransactionLimits) -> bool {
        if self.bytes + weight > limits.max_body_bytes {
            return false;
        }
        let taken = self
            .buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |all| {
                (all + weight <= limits.max_buffered_bytes).then_some(all + weight)
            });
        if taken.is_err() {
            return false;
        }
        self.bytes += weight;
        true
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        self.buffered.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The longest `idle_timeout` a client may set (also what 0 means): a
/// connection is never held open forever.
pub const MAX_IDLE_TIMEOUT_MS: u32 = 3_600_000;

/// One connection's attributes and transaction.
#[derive(Debug)]
pub struct Session {
    pub max_results: u32,
    pub top_score_percent: u32,
    /// Search timeout in ms; 0: the HTTP API's default.
    pub timeout: u32,
    /// Ms without a request before the connection is closed; 0 or more
    /// than [`MAX_IDLE_TIMEOUT_MS`]: that.
    pub idle_timeout: u32,
    limits: TransactionLimits,
    buffered: Buffered,
    transaction: Option<Transaction>,
}

/// Room for the `_update` body's own keys and a metadata entry's.
const BODY_OVERHEAD: usize = 64;

impl Session {
    pub fn new(limits: TransactionLimits, buffered: Buffered) -> Session {
        Session {
            max_results: 500,
            top_score_percent: 10,
            timeout: 0,
            idle_timeout: 60_000,
            limits,
            buffered,
            transaction: None,
        }
    }

    fn attribute(&mut self, name: &str) -> Option<&mut u32> {
        match name {
            "max_results" => Some(&mut self.max_results),
            "top_score_percent" => Some(&mut self.top_score_percent),
            "timeout" => Some(&mut self.timeout),
            "idle_timeout" => Some(&mut self.idle_timeout),
            _ => None,
        }
    }

    /// Answers one request line. Returns the command's name (for metrics)
    /// with the reply.
    pub async fn handle(&mut self, line: &str, backend: &Backend) -> (&'static str, Reply) {
        let command = match command::parse(line, self.transaction.is_some()) {
            Ok(c) => c,
            Err(ParseError::Unknown) => return ("unknown", Reply::err("unknown command")),
            Err(e) => {
                let name = line.split(' ').find(|w| !w.is_empty()).unwrap_or("");
                return (known(name), Reply::err(e.to_string()));
            }
        };
        match command {
            Command::Empty => ("empty", Reply::ok()),
            Command::Echo(words) => ("echo", Reply::Ok(words)),
            Command::Search(query) => ("search", self.search(&query, backend).await),
            Command::Begin => ("begin", self.begin()),
            Command::Insert { id, hashes } => ("insert", self.insert(id, hashes)),
            Command::Commit => ("commit", self.commit(backend).await),
            Command::Rollback => (
                "rollback",
                match self.transaction.take() {
                    Some(_) => Reply::ok(),
                    None => Reply::err("not in transaction"),
                },
            ),
            Command::Noop => (
                "optimize",
                if self.transaction.is_some() {
                    Reply::ok()
                } else {
                    Reply::err("not in transaction")
                },
            ),
            Command::Get(name) => ("get", self.get(&name, backend).await),
            Command::Set { name, value } => ("set", self.set(name, value)),
        }
    }

    async fn search(&self, query: &[u32], backend: &Backend) -> Reply {
        let opts = SearchOptions {
            limit: self.max_results,
            score_pct: self.top_score_percent,
            timeout: self.timeout,
        };
        match backend.search(query, opts).await {
            Ok(hits) => Reply::Ok(
                hits.iter()
                    .map(|(id, score)| format!("{id}:{score}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            Err(e) if e.name == "SearchTimeout" => Reply::err("timeout exceeded"),
            Err(e) => {
                tracing::warn!(error = %e, "legacy protocol: search failed");
                Reply::err("search failed")
            }
        }
    }

    fn begin(&mut self) -> Reply {
        if self.transaction.is_some() {
            return Reply::err("already in transaction");
        }
        self.transaction = Some(Transaction::new(&self.buffered));
        Reply::ok()
    }

    fn insert(&mut self, id: u32, hashes: Vec<u32>) -> Reply {
        let limits = self.limits;
        let Some(t) = self.transaction.as_mut() else {
            return Reply::err("not in transaction");
        };
        if hashes.len() > limits.max_hashes {
            return Reply::err("too many hashes");
        }
        // At most 5 bytes a hash, and the change's own framing: maps and
        // keys `{"insert": {"id": u32, "hashes": [..]}}`, 29 bytes at most.
        let weight = 5 * hashes.len() + 32;
        if (!t.inserts.contains_key(&id) && t.inserts.len() >= limits.max_changes)
            || !t.reserve(weight, &limits)
        {
            return Reply::err("transaction too large");
        }
        t.inserts.insert(id, hashes);
        Reply::ok()
    }

    async fn commit(&mut self, backend: &Backend) -> Reply {
        let Some(t) = self.transaction.take() else {
            return Reply::err("not in transaction");
        };
        if t.inserts.is_empty() && t.attributes.is_empty() {
            return Reply::ok();
        }
        match backend.commit(&t.inserts, &t.attributes).await {
            Ok(()) => Reply::ok(),
            Err(e) => {
                tracing::warn!(error = %e, inserts = t.inserts.len(), "legacy protocol: commit failed");
                Reply::err("commit failed")
            }
        }
    }

    async fn get(&mut self, name: &str, backend: &Backend) -> Reply {
        if let Some(value) = self.attribute(name) {
            return Reply::Ok(value.to_string());
        }
        match backend.metadata(name).await {
            Ok(value) => Reply::Ok(value.unwrap_or_default()),
            Err(e) => {
                tracing::warn!(error = %e, "legacy protocol: metadata not read");
                Reply::err("internal error")
            }
        }
    }

    fn set(&mut self, name: String, value: String) -> Reply {
        if let Some(attribute) = self.attribute(&name) {
            return match value.parse::<u32>() {
                Ok(v) => {
                    *attribute = v;
                    Reply::ok()
                }
                Err(_) => Reply::err("invalid value"),
            };
        }
        let limits = self.limits;
        let Some(t) = self.transaction.as_mut() else {
            return Reply::err("not in transaction");
        };
        let weight = name.len() + value.len() + 16;
        if !t.reserve(weight, &limits) {
            return Reply::err("transaction too large");
        }
        t.attributes.insert(name, value);
        Reply::ok()
    }
}

/// A command's name as a metric label (a fixed set).
fn known(name: &str) -> &'static str {
    match name {
        "echo" => "echo",
        "search" => "search",
        "begin" => "begin",
        "insert" => "insert",
        "commit" => "commit",
        "rollback" => "rollback",
        "optimize" | "cleanup" => "optimize",
        "get" => "get",
        "set" => "set",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The weight counted for a transaction bounds its `_update` body,
    /// worst case included (ids and hashes needing 5 bytes, arrays past 16
    /// items, metadata): a transaction accepted insert by insert is never
    /// refused at commit for its size.
    #[test]
    fn a_transaction_weighs_at_least_its_body() {
        let limits = TransactionLimits {
            max_changes: 10_000,
            max_hashes: 100_000,
            max_body_bytes: 64 << 20,
            max_buffered_bytes: 256 << 20,
        };
        let buffered = Buffered::default();
        let mut session = Session::new(limits, buffered.clone());
        assert!(matches!(session.begin(), Reply::Ok(_)));
        let worst = (0..200).map(|k| (u32::MAX - k, 16));
        for (id, n) in [(70_000, 100), (1, 0), (2, 1), (65_536, 300)]
            .into_iter()
            .chain(worst)
        {
            let hashes = vec![u32::MAX; n];
            assert!(matches!(session.insert(id, hashes), Reply::Ok(_)));
        }
        assert!(matches!(
            session.set("a_name".into(), "a value".into()),
            Reply::Ok(_)
        ));
        let t = session.transaction.as_ref().unwrap();
        let body = super::super::backend::commit_body(&t.inserts, &t.attributes).unwrap();
        assert!(
            body.len() <= t.bytes,
            "body {} bytes, counted {}",
            body.len(),
            t.bytes
        );
        // What an open transaction holds is counted across sessions, and
        // given back when it ends.
        assert!(buffered.load(Ordering::Acquire) >= t.bytes);
    }

    #[test]
    fn the_buffered_budget_is_shared_by_every_session() {
        let limits = TransactionLimits {
            max_changes: 10_000,
            max_hashes: 100_000,
            max_body_bytes: 1 << 20,
            // Room for one of these transactions, not two.
            max_buffered_bytes: (1 << 20) * 3 / 2,
        };
        let buffered = Buffered::default();
        let (mut a, mut b) = (
            Session::new(limits, buffered.clone()),
            Session::new(limits, buffered),
        );
        a.begin();
        b.begin();
        let big = vec![7u32; 150_000 / 5];
        let mut id = 0;
        while matches!(a.insert(id, big.clone()), Reply::Ok(_)) {
            id += 1;
        }
        assert!(id > 0, "a took nothing");
        let mut taken = 0;
        while matches!(b.insert(id + taken, big.clone()), Reply::Ok(_)) {
            taken += 1;
        }
        assert!(
            taken < id,
            "b took {taken} beside a's {id}: the budget was not shared"
        );
        a.transaction = None;
        assert!(matches!(b.insert(u32::MAX - 1, big.clone()), Reply::Ok(_)));
    }
}

//! Plain data the engine speaks: fingerprint ids, positions, generations,
//! changes and batches.
//!
//! Two integers that could be confused get a newtype each: a [`Position`] (where a
//! batch sits in the ordered log an index follows: a local version in standalone
//! mode, a JetStream sequence in replica mode) never mixes with a
//! [`Generation`] (which incarnation of an index name this is) or a [`SegmentId`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a batch sits in the log an index follows. Strictly increasing from one
/// applied batch to the next; 0 means "nothing applied yet".
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which incarnation of an index this data belongs to. Minted when an index is
/// created; a delete followed by a create gets a new one.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identity of a segment within one index directory (file name of file segments).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct SegmentId(pub u64);

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A fingerprint id. Valid ids are non-zero.
pub type FingerprintId = u32;

/// One change to the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Set the fingerprint's hashes (insert or replace). Repeated hashes count once.
    Insert { id: FingerprintId, hashes: Vec<u32> },
    /// Remove the fingerprint.
    Delete { id: FingerprintId },
}

impl Change {
    pub fn id(&self) -> FingerprintId {
        match self {
            Change::Insert { id, .. } | Change::Delete { id } => *id,
        }
    }
}

/// Changes to index metadata: `Some(value)` sets a key, `None` removes it.
pub type MetadataDelta = BTreeMap<String, Option<String>>;

/// Index metadata: free-form string attributes set through `_update`.
pub type Metadata = BTreeMap<String, String>;

/// A batch of changes applied atomically at one position. Within a batch the last
/// change of an id wins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub position: Position,
    pub changes: Vec<Change>,
    pub metadata: MetadataDelta,
    /// The ids this batch inserts that were live before it (so each such
    /// insert replaced a fingerprint: an `update` in the change feed),
    /// ascending. Set when the batch is logged (`Index::log`); empty in a
    /// batch never logged and in WAL records written before it existed
    /// (it is the record's last field, so those still decode).
    #[serde(default)]
    pub replaced: Vec<FingerprintId>,
}

impl Batch {
    pub fn new(position: Position, changes: Vec<Change>) -> Self {
        Batch {
            position,
            changes,
            metadata: MetadataDelta::new(),
            replaced: Vec::new(),
        }
    }

    /// Whether the batch's insert of `id` replaced a live fingerprint.
    pub fn replaces(&self, id: FingerprintId) -> bool {
        self.replaced.binary_search(&id).is_ok()
    }

    /// Number of postings this batch will add at most (before deduplication).
    pub fn num_hashes(&self) -> usize {
        self.changes
            .iter()
            .map(|c| match c {
                Change::Insert { hashes, .. } => hashes.len(),
                Change::Delete { .. } => 0,
            })
            .sum()
    }
}

/// Applies a metadata delta to a metadata map.
pub fn apply_metadata_delta(metadata: &mut Metadata, delta: &MetadataDelta) {
    for (key, value) in delta {
        match value {
            Some(v) => {
                metadata.insert(key.clone(), v.clone());
            }
            None => {
                metadata.remove(key);
            }
        }
    }
}

/// A posting packed as `hash << 32 | id`: sorting the packed value sorts by
/// `(hash, id)`, which is the order postings are stored in.
pub type PackedPosting = u64;

#[inline]
pub fn pack(hash: u32, id: FingerprintId) -> PackedPosting {
    (u64::from(hash) << 32) | u64::from(id)
}

#[inline]
pub fn unpack(p: PackedPosting) -> (u32, FingerprintId) {
    ((p >> 32) as u32, p as u32)
}

/// The deterministic batch at `position` used by the crash test and its driver
/// (`fpseg-torture`): 1-16 changes over ids 1..=400 and hashes 0..4000, about a
/// fifth of them deletes, sometimes a metadata change.
#[doc(hidden)]
pub fn torture_batch(position: Position) -> Batch {
    // SplitMix64: small, deterministic, no dependency.
    let mut state = position.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let n = 1 + next() % 16;
    let changes = (0..n)
        .map(|_| {
            let id = 1 + (next() % 400) as u32;
            if next() % 5 == 0 {
                Change::Delete { id }
            } else {
                let len = 5 + next() % 40;
                Change::Insert {
                    id,
                    hashes: (0..len).map(|_| (next() % 4000) as u32).collect(),
                }
            }
        })
        .collect();
    let mut metadata = MetadataDelta::new();
    if next() % 10 == 0 {
        metadata.insert("last".into(), Some(position.0.to_string()));
    }
    Batch {
        position,
        changes,
        metadata,
        replaced: Vec::new(),
    }
}

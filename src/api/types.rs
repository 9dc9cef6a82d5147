//! Request bodies. Field names are accepted in full (JSON style) or as their
//! first letter (MessagePack style), in either format.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct SearchRequest {
    #[serde(alias = "q")]
    pub query: Vec<u32>,
    #[serde(default, alias = "l")]
    pub limit: Option<u64>,
    #[serde(default, alias = "t")]
    pub timeout: Option<u64>,
    #[serde(default, alias = "m")]
    pub min_score: Option<u32>,
    #[serde(default, alias = "s")]
    pub score_pct: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct UpdateRequest {
    #[serde(alias = "c")]
    pub changes: Vec<ChangeIn>,
    #[serde(default, alias = "m")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default, alias = "e")]
    pub expected_version: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub enum ChangeIn {
    #[serde(rename = "insert", alias = "i")]
    Insert(InsertIn),
    #[serde(rename = "delete", alias = "d")]
    Delete(DeleteIn),
}

#[derive(Debug, Deserialize)]
pub struct InsertIn {
    /// u64 so an id beyond u32 is `InvalidFingerprintId`, not a decode error.
    #[serde(alias = "i")]
    pub id: u64,
    #[serde(alias = "h")]
    pub hashes: Vec<u32>,
}

#[derive(Debug, Deserialize)]
pub struct DeleteIn {
    #[serde(alias = "i")]
    pub id: u64,
}

#[derive(Debug, Deserialize)]
pub struct PutFingerprintRequest {
    #[serde(alias = "h")]
    pub hashes: Vec<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CreateIndexRequest {
    #[serde(default, alias = "e")]
    pub expect_does_not_exist: bool,
    #[serde(default, alias = "g")]
    pub generation: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct DeleteIndexRequest {
    #[serde(default, alias = "e")]
    pub expect_exists: bool,
}

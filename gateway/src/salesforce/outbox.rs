//! The durable call log outbox: SQLite in WAL mode with full sync. A call log is committed here
//! before anything else happens to it and leaves only when Salesforce has accepted it; logs
//! Salesforce refuses for good move to a dead-letter table, from which they can be replayed.

use std::path::Path;
use std::sync::Mutex;

use actors::call::{CallLogRecord, LegNote};
use actors::crm::engine::log_key;
use actors::crm::port::{DeadLetter, Outbox, OutboxError, PendingLog};
use rusqlite::{Connection, OptionalExtension, params};

/// The outbox over one SQLite database.
pub struct SqliteOutbox {
    connection: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOutbox").finish_non_exhaustive()
    }
}

fn failed(error: impl std::fmt::Display) -> OutboxError {
    OutboxError(error.to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

impl SqliteOutbox {
    /// Opens (or creates) the outbox at `path`.
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        let connection =
            Connection::open(path).map_err(|error| failed(format!("opening {}: {error}", path.display())))?;
        Self::with_connection(connection)
    }

    fn with_connection(connection: Connection) -> Result<Self, OutboxError> {
        // WAL lets readers (the admin API) run beside the writer; FULL syncs every commit to disk,
        // so a committed call log survives a power cut, not only a crash.
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA busy_timeout = 5000;
                 CREATE TABLE IF NOT EXISTS outbox (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     key TEXT NOT NULL UNIQUE,
                     record TEXT NOT NULL,
                     attempts INTEGER NOT NULL DEFAULT 0,
                     stored_at INTEGER NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS open_legs (
                     key TEXT PRIMARY KEY,
                     device TEXT NOT NULL,
                     call_id TEXT NOT NULL,
                     record TEXT NOT NULL,
                     closed INTEGER NOT NULL DEFAULT 0,
                     updated_at INTEGER NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS open_legs_by_call ON open_legs (device, call_id);
                 CREATE TABLE IF NOT EXISTS unconfirmed (key TEXT PRIMARY KEY);
                 CREATE TABLE IF NOT EXISTS dead_letters (
                     key TEXT PRIMARY KEY,
                     record TEXT NOT NULL,
                     reason TEXT NOT NULL,
                     at INTEGER NOT NULL
                 );",
            )
            .map_err(failed)?;
        Ok(Self { connection: Mutex::new(connection) })
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Commits `records` in one transaction (one sync for the lot) and returns those that were not
    /// already held, as the budget actor takes them.
    pub fn append(&self, records: &[CallLogRecord]) -> Result<Vec<PendingLog>, OutboxError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(failed)?;
        let mut added = Vec::new();
        {
            let mut insert = transaction
                .prepare_cached("INSERT OR IGNORE INTO outbox (key, record, stored_at) VALUES (?1, ?2, ?3)")
                .map_err(failed)?;
            let stored_at = now_ms();
            for record in records {
                let key = log_key(record);
                let json = serde_json::to_string(record).map_err(failed)?;
                if insert.execute(params![key, json, stored_at as i64]).map_err(failed)? == 1 {
                    added.push(PendingLog { key, record: record.clone(), attempts: 0 });
                }
            }
        }
        transaction.commit().map_err(failed)?;
        Ok(added)
    }

    /// Applies the model's leg notes in one transaction (one disk sync for the lot): open legs
    /// are journaled, ended legs' records enter the outbox, and after the first resync the legs
    /// of calls the PBX no longer has are closed as having ended while the gateway was down.
    /// Returns the call logs newly in the outbox, for the budget actor.
    pub fn apply(&self, notes: &[LegNote], now_ms: u64) -> Result<Vec<PendingLog>, OutboxError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(failed)?;
        let mut added = Vec::new();
        for note in notes {
            match note {
                LegNote::Open(record) => {
                    let (key, record) = journaled_identity(&transaction, record.clone())?;
                    let json = serde_json::to_string(&record).map_err(failed)?;
                    transaction
                        .execute(
                            "INSERT INTO open_legs (key, device, call_id, record, closed, updated_at)
                             VALUES (?1, ?2, ?3, ?4, 0, ?5)
                             ON CONFLICT (key) DO UPDATE SET call_id = ?3, record = ?4, updated_at = ?5
                             WHERE closed = 0",
                            params![key, record.device, record.call_id, json, now_ms as i64],
                        )
                        .map_err(failed)?;
                }
                LegNote::Moved(keys) => {
                    for key in keys {
                        transaction
                            .execute("DELETE FROM open_legs WHERE key = ?1 AND closed = 0", params![key])
                            .map_err(failed)?;
                    }
                }
                LegNote::Closed(record) | LegNote::Skipped(record) => {
                    let (key, record) = journaled_identity(&transaction, record.clone())?;
                    let tombstoned: bool = transaction
                        .query_row("SELECT closed FROM open_legs WHERE key = ?1", params![key], |row| {
                            row.get::<_, i64>(0)
                        })
                        .optional()
                        .map_err(failed)?
                        .is_some_and(|closed| closed != 0);
                    transaction.execute("DELETE FROM open_legs WHERE key = ?1", params![key]).map_err(failed)?;
                    if matches!(note, LegNote::Closed(_)) {
                        // A leg closed at a restart as "ended while down" gets its true record now:
                        // it replaces the guess, under the same key (one Task either way).
                        let verb = if tombstoned { "INSERT OR REPLACE" } else { "INSERT OR IGNORE" };
                        let json = serde_json::to_string(&record).map_err(failed)?;
                        let inserted = transaction
                            .execute(
                                &format!("{verb} INTO outbox (key, record, stored_at) VALUES (?1, ?2, ?3)"),
                                params![key, json, now_ms as i64],
                            )
                            .map_err(failed)?;
                        if inserted == 1 {
                            added.push(PendingLog { key, record, attempts: 0 });
                        }
                    }
                }
                LegNote::Present(calls) => {
                    added.extend(close_vanished(&transaction, calls, now_ms)?);
                }
                // Lines taken from another node: only a cluster's shared journal knows their legs.
                LegNote::Taken { .. } => {}
            }
        }
        transaction.commit().map_err(failed)?;
        Ok(added)
    }

    /// Commits the call logs of a cluster node (one transaction, one sync), each held back from
    /// delivery until [`Self::confirm`]: the shared journal must first say the leg is this node's
    /// to log. Returns those not already held.
    pub fn append_unconfirmed(&self, records: &[CallLogRecord], now_ms: u64) -> Result<Vec<PendingLog>, OutboxError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(failed)?;
        let mut added = Vec::new();
        for record in records {
            let key = record.key();
            let json = serde_json::to_string(record).map_err(failed)?;
            let inserted = transaction
                .execute(
                    "INSERT OR IGNORE INTO outbox (key, record, stored_at) VALUES (?1, ?2, ?3)",
                    params![key, json, now_ms as i64],
                )
                .map_err(failed)?;
            if inserted == 1 {
                transaction
                    .execute("INSERT OR IGNORE INTO unconfirmed (key) VALUES (?1)", params![key])
                    .map_err(failed)?;
                added.push(PendingLog { key, record: record.clone(), attempts: 0 });
            }
        }
        transaction.commit().map_err(failed)?;
        Ok(added)
    }

    /// Call logs held back for the shared journal's word, oldest first.
    pub fn unconfirmed(&self) -> Result<Vec<String>, OutboxError> {
        let connection = self.connection();
        let mut select = connection
            .prepare("SELECT unconfirmed.key FROM unconfirmed JOIN outbox ON outbox.key = unconfirmed.key ORDER BY seq")
            .map_err(failed)?;
        select.query_map([], |row| row.get(0)).map_err(failed)?.collect::<Result<_, _>>().map_err(failed)
    }

    /// Releases held-back call logs for delivery (they are this node's to log); returns those that
    /// were held back.
    pub fn confirm(&self, keys: &[String]) -> Result<Vec<PendingLog>, OutboxError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(failed)?;
        let mut confirmed = Vec::new();
        for key in keys {
            // Only a log still held back is released, so none reaches the budget actor twice.
            if transaction.execute("DELETE FROM unconfirmed WHERE key = ?1", params![key]).map_err(failed)? == 0 {
                continue;
            }
            let json: Option<String> = transaction
                .query_row("SELECT record FROM outbox WHERE key = ?1", params![key], |row| row.get(0))
                .optional()
                .map_err(failed)?;
            if let Some(json) = json {
                let record = serde_json::from_str(&json).map_err(failed)?;
                confirmed.push(PendingLog { key: key.clone(), record, attempts: 0 });
            }
        }
        transaction.commit().map_err(failed)?;
        Ok(confirmed)
    }

    /// Drops held-back call logs: another node logs these legs (it holds them in the journal).
    pub fn withdraw(&self, keys: &[String]) -> Result<(), OutboxError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(failed)?;
        for key in keys {
            transaction
                .execute("DELETE FROM outbox WHERE key = ?1 AND key IN (SELECT key FROM unconfirmed)", params![key])
                .map_err(failed)?;
            transaction.execute("DELETE FROM unconfirmed WHERE key = ?1", params![key]).map_err(failed)?;
        }
        transaction.commit().map_err(failed)
    }

    /// Legs journaled and not yet closed.
    pub fn open_legs(&self) -> Result<usize, OutboxError> {
        let connection = self.connection();
        connection
            .query_row("SELECT COUNT(*) FROM open_legs WHERE closed = 0", [], |row| row.get::<_, i64>(0))
            .map(|count| count as usize)
            .map_err(failed)
    }

    /// Dead letters, oldest first, at most `limit`.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, OutboxError> {
        let connection = self.connection();
        let mut select = connection
            .prepare_cached("SELECT key, record, reason, at FROM dead_letters ORDER BY at, key LIMIT ?1")
            .map_err(failed)?;
        let rows = select
            .query_map(params![limit as i64], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })
            .map_err(failed)?;
        let mut letters = Vec::new();
        for row in rows {
            let (key, record, reason, at) = row.map_err(failed)?;
            // Listed even when unreadable: the count says it is there, so the list must too.
            let (record, reason) = match serde_json::from_str(&record) {
                Ok(record) => (Some(record), reason),
                Err(error) => (None, format!("{reason} (the stored record is unreadable by this version: {error})")),
            };
            letters.push(DeadLetter { key, record, reason, at: at as u64 });
        }
        Ok(letters)
    }

    /// How many dead letters there are.
    pub fn dead_letter_count(&self) -> Result<u64, OutboxError> {
        let connection = self.connection();
        connection
            .query_row("SELECT COUNT(*) FROM dead_letters", [], |row| row.get::<_, i64>(0))
            .map(|count| count as u64)
            .map_err(failed)
    }

    /// Moves dead letters (these keys, or all when `keys` is empty) back to the outbox and returns
    /// them, for the budget actor to send again.
    pub fn replay(&self, keys: &[String]) -> Result<Vec<PendingLog>, OutboxError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(failed)?;
        let chosen: Vec<(String, String)> = {
            let mut select =
                transaction.prepare("SELECT key, record FROM dead_letters ORDER BY at, key").map_err(failed)?;
            let rows =
                select.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))).map_err(failed)?;
            let mut chosen = Vec::new();
            for row in rows {
                let (key, record) = row.map_err(failed)?;
                if keys.is_empty() || keys.contains(&key) {
                    chosen.push((key, record));
                }
            }
            chosen
        };
        let mut replayed = Vec::new();
        for (key, json) in chosen {
            // One letter this version cannot read must not stop the others: it stays a dead letter.
            let record = match serde_json::from_str(&json) {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(key, %error, "a dead letter this version cannot read is not replayed");
                    continue;
                }
            };
            transaction
                .execute(
                    "INSERT OR IGNORE INTO outbox (key, record, stored_at) VALUES (?1, ?2, ?3)",
                    params![key, json, now_ms() as i64],
                )
                .map_err(failed)?;
            transaction.execute("DELETE FROM dead_letters WHERE key = ?1", params![key]).map_err(failed)?;
            replayed.push(PendingLog { key, record, attempts: 0 });
        }
        transaction.commit().map_err(failed)?;
        Ok(replayed)
    }
}

/// The key and record a leg is journaled under. A call rebuilt from a snapshot after a restart
/// has its id at that time as its first id; if the journal knew the call under an earlier first
/// id, the leg keeps that one, so its Task's key does not change.
fn journaled_identity(
    transaction: &rusqlite::Transaction<'_>,
    mut record: CallLogRecord,
) -> Result<(String, CallLogRecord), OutboxError> {
    let key = record.key();
    let known: bool = transaction
        .query_row("SELECT 1 FROM open_legs WHERE key = ?1", params![key], |_| Ok(()))
        .optional()
        .map_err(failed)?
        .is_some();
    if known {
        return Ok((key, record));
    }
    let earlier: Option<(String, String)> = transaction
        .query_row(
            "SELECT key, record FROM open_legs WHERE device = ?1 AND call_id = ?2 AND key != ?3 LIMIT 1",
            params![record.device, record.root_call_id, key],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(failed)?;
    match earlier {
        Some((earlier_key, json)) => {
            let journaled: CallLogRecord = serde_json::from_str(&json).map_err(failed)?;
            record.root_call_id = journaled.root_call_id;
            Ok((earlier_key, record))
        }
        None => Ok((key, record)),
    }
}

/// The record of a journaled leg whose call ended while no gateway watched its line: it ends when
/// the gateway found out, and its notes say so.
pub fn ended_while_down(mut record: CallLogRecord, now_ms: u64) -> CallLogRecord {
    let ended_at = now_ms.max(record.offered_at);
    record.ended_at = ended_at;
    if let Some(answered_at) = record.answered_at {
        record.talk_seconds = (ended_at.saturating_sub(answered_at) / 1000).saturating_sub(record.hold_seconds);
    }
    let marker = "[ended while the gateway was down; end time approximate]";
    record.notes = if record.notes.is_empty() { marker.to_owned() } else { format!("{} {marker}", record.notes) };
    record
}

/// Closes the journaled legs of calls not in `present` (the model after the first resync): they
/// ended while the gateway was down. Their records say so in the notes; the end time is when the
/// gateway found out. Rows stay as tombstones for a day, so a late true record replaces the guess.
fn close_vanished(
    transaction: &rusqlite::Transaction<'_>,
    present: &[String],
    now_ms: u64,
) -> Result<Vec<PendingLog>, OutboxError> {
    let present: std::collections::HashSet<&str> = present.iter().map(String::as_str).collect();
    let rows: Vec<(String, String, String)> = {
        let mut select =
            transaction.prepare("SELECT key, call_id, record FROM open_legs WHERE closed = 0").map_err(failed)?;
        select
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .map_err(failed)?
            .collect::<Result<_, _>>()
            .map_err(failed)?
    };
    let mut added = Vec::new();
    for (key, call_id, json) in rows {
        if present.contains(call_id.as_str()) {
            continue;
        }
        let record = ended_while_down(serde_json::from_str(&json).map_err(failed)?, now_ms);
        let record_json = serde_json::to_string(&record).map_err(failed)?;
        let inserted = transaction
            .execute(
                "INSERT OR IGNORE INTO outbox (key, record, stored_at) VALUES (?1, ?2, ?3)",
                params![key, record_json, now_ms as i64],
            )
            .map_err(failed)?;
        transaction
            .execute("UPDATE open_legs SET closed = 1, updated_at = ?2 WHERE key = ?1", params![key, now_ms as i64])
            .map_err(failed)?;
        tracing::warn!(key, "a call leg ended while the gateway was down; logging it with an approximate end");
        if inserted == 1 {
            added.push(PendingLog { key, record, attempts: 0 });
        }
    }
    transaction
        .execute(
            "DELETE FROM open_legs WHERE closed = 1 AND updated_at < ?1",
            params![now_ms.saturating_sub(86_400_000) as i64],
        )
        .map_err(failed)?;
    Ok(added)
}

impl Outbox for SqliteOutbox {
    fn pending(&self) -> Result<Vec<PendingLog>, OutboxError> {
        let mut connection = self.connection();
        let rows: Vec<(String, String, i64)> = {
            let mut select =
                connection
                .prepare(
                    "SELECT key, record, attempts FROM outbox WHERE key NOT IN (SELECT key FROM unconfirmed) ORDER BY seq",
                )
                .map_err(failed)?;
            select
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .map_err(failed)?
                .collect::<Result<_, _>>()
                .map_err(failed)?
        };
        let mut pending = Vec::new();
        let mut unreadable = Vec::new();
        for (key, json, attempts) in rows {
            match serde_json::from_str(&json) {
                Ok(record) => {
                    pending.push(PendingLog { key, record, attempts: u32::try_from(attempts).unwrap_or(u32::MAX) })
                }
                Err(error) => unreadable.push((key, json, error.to_string())),
            }
        }
        if !unreadable.is_empty() {
            // A record this version cannot read is kept aside with the reason, never dropped.
            let transaction = connection.transaction().map_err(failed)?;
            for (key, json, error) in unreadable {
                tracing::error!(key, error, "an outbox record could not be read; moved to the dead letters");
                transaction
                    .execute(
                        "INSERT OR REPLACE INTO dead_letters (key, record, reason, at) VALUES (?1, ?2, ?3, ?4)",
                        params![key, json, format!("unreadable record: {error}"), now_ms() as i64],
                    )
                    .map_err(failed)?;
                transaction.execute("DELETE FROM outbox WHERE key = ?1", params![key]).map_err(failed)?;
            }
            transaction.commit().map_err(failed)?;
        }
        Ok(pending)
    }

    fn delivered(&self, keys: &[String]) -> Result<(), OutboxError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(failed)?;
        {
            let mut delete = transaction.prepare_cached("DELETE FROM outbox WHERE key = ?1").map_err(failed)?;
            for key in keys {
                delete.execute(params![key]).map_err(failed)?;
            }
        }
        transaction.commit().map_err(failed)
    }

    fn attempted(&self, keys: &[String]) -> Result<(), OutboxError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(failed)?;
        {
            let mut update = transaction
                .prepare_cached("UPDATE outbox SET attempts = attempts + 1 WHERE key = ?1")
                .map_err(failed)?;
            for key in keys {
                update.execute(params![key]).map_err(failed)?;
            }
        }
        transaction.commit().map_err(failed)
    }

    fn dead_letter(&self, key: &str, reason: &str) -> Result<(), OutboxError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(failed)?;
        let record: Option<String> = transaction
            .query_row("SELECT record FROM outbox WHERE key = ?1", params![key], |row| row.get(0))
            .optional()
            .map_err(failed)?;
        if let Some(record) = record {
            transaction
                .execute(
                    "INSERT OR REPLACE INTO dead_letters (key, record, reason, at) VALUES (?1, ?2, ?3, ?4)",
                    params![key, record, reason, now_ms() as i64],
                )
                .map_err(failed)?;
            transaction.execute("DELETE FROM outbox WHERE key = ?1", params![key]).map_err(failed)?;
        }
        transaction.commit().map_err(failed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use actors::domain::{Direction, LegOutcome};

    use super::*;

    pub(crate) fn record(root: &str) -> CallLogRecord {
        CallLogRecord {
            root_call_id: root.into(),
            call_id: root.into(),
            device: "2001".into(),
            agent_id: None,
            direction: Direction::Inbound,
            outcome: LegOutcome::Missed,
            via_queue: true,
            queue: Some("5000".into()),
            calling: "+49301111111".into(),
            called: "5000".into(),
            parties: vec!["+49301111111".into(), "2001".into()],
            offered_at: 1,
            answered_at: None,
            ended_at: 2,
            talk_seconds: 0,
            hold_seconds: 0,
            notes: "n".into(),
            disposition: None,
            recording_url: None,
        }
    }

    pub(crate) fn temp_outbox() -> (tempfile_dir::Dir, SqliteOutbox) {
        let dir = tempfile_dir::Dir::new();
        let outbox = SqliteOutbox::open(&dir.path().join("outbox.sqlite3")).unwrap();
        (dir, outbox)
    }

    /// A directory under the target dir removed on drop (no extra crate for one test helper).
    pub(crate) mod tempfile_dir {
        pub(crate) struct Dir(std::path::PathBuf);
        impl Dir {
            pub(super) fn new() -> Self {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir().join(format!("switchboard-outbox-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&path).unwrap();
                Self(path)
            }
            pub(super) fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_held_back_log_is_delivered_only_once_confirmed_and_a_withdrawn_one_never() {
        let (_dir, outbox) = temp_outbox();
        let added = outbox.append_unconfirmed(&[record("C1"), record("C2")], 10).unwrap();
        assert_eq!(added.len(), 2);
        assert!(outbox.append_unconfirmed(&[record("C1")], 11).unwrap().is_empty(), "held once");
        assert!(outbox.pending().unwrap().is_empty(), "nothing held back is delivered");
        assert_eq!(outbox.unconfirmed().unwrap(), ["C1:2001", "C2:2001"]);
        let released = outbox.confirm(&["C1:2001".to_owned()]).unwrap();
        assert_eq!(released.len(), 1);
        assert!(outbox.confirm(&["C1:2001".to_owned()]).unwrap().is_empty(), "released once");
        outbox.withdraw(&["C2:2001".to_owned(), "C1:2001".to_owned()]).unwrap();
        let pending: Vec<String> = outbox.pending().unwrap().into_iter().map(|log| log.key).collect();
        assert_eq!(pending, ["C1:2001"], "a released log is not withdrawn");
        assert!(outbox.unconfirmed().unwrap().is_empty());
    }

    #[test]
    fn logs_survive_a_reopen_until_delivered_and_are_taken_once() {
        let (dir, outbox) = temp_outbox();
        let added = outbox.append(&[record("C1"), record("C2"), record("C1")]).unwrap();
        assert_eq!(added.iter().map(|log| log.key.as_str()).collect::<Vec<_>>(), ["C1:2001", "C2:2001"]);
        assert!(outbox.append(&[record("C2")]).unwrap().is_empty(), "held already");
        drop(outbox);

        let outbox = SqliteOutbox::open(&dir.path().join("outbox.sqlite3")).unwrap();
        let pending = outbox.pending().unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].record, record("C1"), "the record comes back whole");
        outbox.attempted(&["C2:2001".to_owned()]).unwrap();
        outbox.delivered(&["C1:2001".to_owned()]).unwrap();
        let pending = outbox.pending().unwrap();
        assert_eq!(pending.iter().map(|log| (log.key.as_str(), log.attempts)).collect::<Vec<_>>(), [("C2:2001", 1)]);
    }

    #[test]
    fn dead_letters_are_kept_with_their_reason_and_can_be_replayed() {
        let (_dir, outbox) = temp_outbox();
        outbox.append(&[record("C1"), record("C2")]).unwrap();
        outbox.dead_letter("C1:2001", "STRING_TOO_LONG: Subject").unwrap();
        outbox.dead_letter("C2:2001", "INVALID_FIELD: x").unwrap();
        assert!(outbox.pending().unwrap().is_empty());
        assert_eq!(outbox.dead_letter_count().unwrap(), 2);
        let letters = outbox.dead_letters(10).unwrap();
        assert_eq!(letters[0].reason, "STRING_TOO_LONG: Subject");
        assert_eq!(letters[0].record, Some(record("C1")));

        let replayed = outbox.replay(&["C2:2001".to_owned()]).unwrap();
        assert_eq!(replayed.len(), 1);
        assert_eq!(outbox.pending().unwrap().len(), 1);
        assert_eq!(outbox.dead_letter_count().unwrap(), 1);
        assert_eq!(outbox.replay(&[]).unwrap().len(), 1, "empty replays all");
        assert_eq!(outbox.dead_letter_count().unwrap(), 0);
    }

    #[test]
    fn a_dead_letter_this_version_cannot_read_is_listed_and_does_not_stop_a_replay_of_the_rest() {
        let (_dir, outbox) = temp_outbox();
        outbox.append(&[record("C1"), record("C2")]).unwrap();
        outbox.dead_letter("C1:2001", "INVALID_FIELD: x").unwrap();
        outbox.dead_letter("C2:2001", "INVALID_FIELD: y").unwrap();
        // As another version might have stored it.
        outbox
            .connection()
            .execute("UPDATE dead_letters SET record = '{\"future_field\": 1}' WHERE key = 'C1:2001'", [])
            .unwrap();
        let letters = outbox.dead_letters(10).unwrap();
        assert_eq!(letters.len(), 2, "the count says two, and so does the list");
        assert_eq!(letters[0].key, "C1:2001");
        assert_eq!(letters[0].record, None);
        assert!(
            letters[0].reason.starts_with("INVALID_FIELD: x (the stored record is unreadable"),
            "{}",
            letters[0].reason
        );
        assert_eq!(letters[1].record, Some(record("C2")));

        let replayed = outbox.replay(&[]).unwrap();
        assert_eq!(replayed.iter().map(|log| log.key.as_str()).collect::<Vec<_>>(), ["C2:2001"]);
        assert_eq!(outbox.pending().unwrap().len(), 1);
        assert_eq!(outbox.dead_letter_count().unwrap(), 1, "the unreadable one stays a dead letter");
    }

    fn answered(root: &str, call: &str) -> CallLogRecord {
        CallLogRecord {
            call_id: call.into(),
            outcome: LegOutcome::Answered,
            answered_at: Some(10_000),
            notes: String::new(),
            ..record(root)
        }
    }

    #[test]
    fn the_journal_turns_legs_into_logs_once_whatever_the_order_of_crash_and_restart() {
        let (_dir, outbox) = temp_outbox();
        // Three legs open; C1 is renamed to C5 by a transfer.
        let notes = [
            LegNote::Open(record("C1")),
            LegNote::Open(record("C2")),
            LegNote::Open(record("C3")),
            LegNote::Open(answered("C1", "C5")),
        ];
        assert!(outbox.apply(&notes, 1_000).unwrap().is_empty());
        assert_eq!(outbox.open_legs().unwrap(), 3);
        // C2 ends normally; C3's leg moves into another call by a merge.
        let added =
            outbox.apply(&[LegNote::Closed(record("C2")), LegNote::Moved(vec!["C3:2001".into()])], 2_000).unwrap();
        assert_eq!(added.iter().map(|log| log.key.as_str()).collect::<Vec<_>>(), ["C2:2001"]);
        assert_eq!(outbox.open_legs().unwrap(), 1);

        // A restart: the rebuilt call knows C5 as its first id. Its legs keep the journal's key.
        let rebuilt = answered("C5", "C5");
        assert!(
            outbox
                .apply(&[LegNote::Open(rebuilt.clone()), LegNote::Present(vec!["C5".into()])], 3_000)
                .unwrap()
                .is_empty()
        );
        assert_eq!(outbox.open_legs().unwrap(), 1, "the same leg, not a second one");
        let added = outbox.apply(&[LegNote::Closed(CallLogRecord { ended_at: 4_000, ..rebuilt })], 4_000).unwrap();
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].key, "C1:2001", "logged under the key it was journaled with");
        assert_eq!(added[0].record.root_call_id, "C1");
        assert_eq!(outbox.open_legs().unwrap(), 0);
    }

    #[test]
    fn legs_of_calls_gone_after_a_restart_are_logged_as_ended_while_down_and_a_late_record_replaces_the_guess() {
        let (_dir, outbox) = temp_outbox();
        outbox.apply(&[LegNote::Open(answered("C1", "C1")), LegNote::Open(record("C2"))], 1_000).unwrap();
        // After the restart's resync, neither call is at the PBX.
        let added = outbox.apply(&[LegNote::Present(Vec::new())], 70_000).unwrap();
        assert_eq!(added.len(), 2);
        let guess = added.iter().find(|log| log.key == "C1:2001").unwrap();
        assert_eq!(guess.record.ended_at, 70_000);
        assert_eq!(guess.record.talk_seconds, 60, "from the answer to when the gateway found out");
        assert!(guess.record.notes.contains("ended while the gateway was down"));
        assert_eq!(outbox.pending().unwrap().len(), 2);
        assert_eq!(outbox.open_legs().unwrap(), 0);
        // The true record after all (the model closed it late): it replaces the guess, same key.
        let late = CallLogRecord { ended_at: 30_000, talk_seconds: 20, ..answered("C1", "C1") };
        let added = outbox.apply(&[LegNote::Closed(late.clone())], 71_000).unwrap();
        assert_eq!(added.len(), 1);
        let pending = outbox.pending().unwrap();
        assert_eq!(pending.len(), 2, "still one log per leg");
        assert_eq!(pending.iter().find(|log| log.key == "C1:2001").unwrap().record, late);
    }

    #[test]
    fn a_skipped_record_only_closes_its_leg() {
        let (_dir, outbox) = temp_outbox();
        outbox.apply(&[LegNote::Open(record("C1"))], 1_000).unwrap();
        assert!(outbox.apply(&[LegNote::Skipped(record("C1"))], 2_000).unwrap().is_empty());
        assert_eq!(outbox.open_legs().unwrap(), 0);
        assert!(outbox.pending().unwrap().is_empty());
    }

    #[test]
    fn a_record_this_version_cannot_read_is_set_aside_not_dropped() {
        let (_dir, outbox) = temp_outbox();
        outbox.append(&[record("C1")]).unwrap();
        outbox
            .connection()
            .execute("INSERT INTO outbox (key, record, stored_at) VALUES ('C9:2001', '{not json', 0)", [])
            .unwrap();
        let pending = outbox.pending().unwrap();
        assert_eq!(pending.iter().map(|log| log.key.as_str()).collect::<Vec<_>>(), ["C1:2001"]);
        assert_eq!(outbox.dead_letter_count().unwrap(), 1, "kept aside with its reason");
        let reason: String = outbox
            .connection()
            .query_row("SELECT reason FROM dead_letters WHERE key = 'C9:2001'", [], |row| row.get(0))
            .unwrap();
        assert!(reason.starts_with("unreadable record"), "{reason}");
    }

    #[test]
    fn the_database_is_in_wal_mode_with_full_sync() {
        let (_dir, outbox) = temp_outbox();
        let connection = outbox.connection();
        let mode: String = connection.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
        let sync: i64 = connection.query_row("PRAGMA synchronous", [], |row| row.get(0)).unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2));
    }
}

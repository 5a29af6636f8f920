//! The server's state in SQL, one schema for SQLite (the default: one file, WAL, no set-up) and
//! PostgreSQL (for several server processes), through sqlx's `Any` driver. Rounds are
//! coordinated here, not in memory: a round is closed by whichever process claims it with a
//! conditional `UPDATE`, and uploads count themselves on the round's row in the same
//! transaction, so an upload either lands in the round being aggregated or is refused.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

/// Tables; types both databases accept (SQLite maps them to its own affinities).
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tokens (
        hash TEXT PRIMARY KEY, role TEXT NOT NULL, task TEXT, device TEXT, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tasks (
        id TEXT PRIMARY KEY, spec TEXT NOT NULL, status TEXT NOT NULL, round BIGINT NOT NULL,
        epsilon DOUBLE PRECISION, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bases (
        task TEXT NOT NULL, base TEXT NOT NULL, position BIGINT NOT NULL, fingerprint TEXT NOT NULL,
        created_at BIGINT NOT NULL, PRIMARY KEY (task, base))",
    "CREATE TABLE IF NOT EXISTS devices (
        id TEXT PRIMARY KEY, task TEXT NOT NULL, name TEXT, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rounds (
        task TEXT NOT NULL, number BIGINT NOT NULL, status TEXT NOT NULL, opened_at BIGINT NOT NULL,
        deadline_at BIGINT NOT NULL, received BIGINT NOT NULL, claim TEXT, claimed_at BIGINT, closed_at BIGINT,
        result TEXT, phase TEXT, phase_deadline BIGINT, members TEXT, PRIMARY KEY (task, number))",
    // Secure rounds (crate::secagg): keys, encrypted shares, reveals.
    "CREATE TABLE IF NOT EXISTS secagg_keys (
        task TEXT NOT NULL, round BIGINT NOT NULL, device TEXT NOT NULL, c_pk TEXT NOT NULL, s_pk TEXT NOT NULL,
        created_at BIGINT NOT NULL, PRIMARY KEY (task, round, device))",
    "CREATE TABLE IF NOT EXISTS secagg_shares (
        task TEXT NOT NULL, round BIGINT NOT NULL, sender TEXT NOT NULL, receiver TEXT NOT NULL,
        ciphertext TEXT NOT NULL, PRIMARY KEY (task, round, sender, receiver))",
    "CREATE TABLE IF NOT EXISTS secagg_reveals (
        task TEXT NOT NULL, round BIGINT NOT NULL, device TEXT NOT NULL, payload TEXT NOT NULL,
        PRIMARY KEY (task, round, device))",
    "CREATE TABLE IF NOT EXISTS updates (
        task TEXT NOT NULL, round BIGINT NOT NULL, device TEXT NOT NULL, digest TEXT NOT NULL,
        base TEXT NOT NULL, weight DOUBLE PRECISION NOT NULL, bytes BIGINT NOT NULL,
        created_at BIGINT NOT NULL, PRIMARY KEY (task, round, device))",
    "CREATE TABLE IF NOT EXISTS patches (
        task TEXT NOT NULL, digest TEXT NOT NULL, base TEXT NOT NULL, round BIGINT NOT NULL,
        kind TEXT NOT NULL, bytes BIGINT NOT NULL, created_at BIGINT NOT NULL,
        deleted BIGINT NOT NULL, PRIMARY KEY (task, digest))",
    // The shared adapter each round trains, per base.
    "CREATE TABLE IF NOT EXISTS globals (
        task TEXT NOT NULL, base TEXT NOT NULL, round BIGINT NOT NULL, digest TEXT NOT NULL,
        PRIMARY KEY (task, base, round))",
];

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub postgres: bool,
}

impl Db {
    /// Connects to `url` (`sqlite://FILE` or `postgres://…`) and creates the tables that are
    /// missing.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let postgres = url.starts_with("postgres:") || url.starts_with("postgresql:");
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if postgres { 16 } else { 4 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL: readers never block the writer. FULL: a committed upload survives
                        // a power cut, not only a crash. busy_timeout: writers queue.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 30000").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        let db = Self { pool, postgres };
        let mut tx = db.pool.begin().await?;
        if postgres {
            // Two processes starting together must not race on CREATE TABLE.
            tx.execute("SELECT pg_advisory_xact_lock(7411)").await?;
        }
        for statement in SCHEMA {
            tx.execute(*statement).await?;
        }
        tx.commit().await?;
        Ok(db)
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A text column.
pub fn text(row: &AnyRow, column: &str) -> Result<String, sqlx::Error> {
    row.try_get(column)
}

pub fn int(row: &AnyRow, column: &str) -> Result<i64, sqlx::Error> {
    row.try_get(column)
}

//! The database's schema, versioned: each migration runs once, in order, inside one
//! transaction that holds an advisory lock, so replicas starting together do not race (the
//! second waits, then finds nothing left to do). A database whose schema is newer than this
//! binary knows is refused: an older replica must not write rows a newer one reads otherwise.
//!
//! Everything lives in the `agentgate` schema of the database the URL names.

use tokio_postgres::Client;

/// The advisory lock key of migrations (any constant; "agentgate" in ASCII, cut to 63 bits).
const LOCK: i64 = 0x6167_656e_7467_6174 & i64::MAX;

/// Migration N+1 is `MIGRATIONS[N]`. Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE agentgate.approvals (
    id          text PRIMARY KEY,
    state       text NOT NULL,
    requester   text NOT NULL,
    mode        text NOT NULL,
    -- The process a waiting request sits in (wait mode); its lease says whether it is alive.
    holder      text,
    created_ms  bigint NOT NULL,
    expires_ms  bigint NOT NULL,
    doc         jsonb NOT NULL
);
CREATE INDEX approvals_by_state ON agentgate.approvals (state, expires_ms);
CREATE INDEX approvals_by_created ON agentgate.approvals (created_ms DESC, id DESC);
CREATE INDEX approvals_by_requester ON agentgate.approvals (requester) WHERE state = 'pending';

CREATE TABLE agentgate.grants (
    requester   text NOT NULL,
    rule        text NOT NULL,
    route       text NOT NULL,
    approval_id text NOT NULL REFERENCES agentgate.approvals (id) ON DELETE CASCADE,
    until_ms    bigint NOT NULL,
    PRIMARY KEY (requester, rule, route)
);

CREATE TABLE agentgate.instances (
    instance    text PRIMARY KEY,
    replica     text NOT NULL,
    started_ms  bigint NOT NULL,
    seen_ms     bigint NOT NULL
);

CREATE TABLE agentgate.records (
    chain        text NOT NULL,
    seq          bigint NOT NULL,
    replica      text NOT NULL,
    id           text NOT NULL,
    prev         text NOT NULL,
    hash         text NOT NULL,
    ts_ms        bigint NOT NULL,
    route        text NOT NULL,
    subject      text NOT NULL,
    conversation text NOT NULL,
    status       integer NOT NULL,
    method       text NOT NULL,
    path         text NOT NULL,
    -- The stored line exactly as written (jsonb would reorder it, and its hash with it).
    line         text NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX records_by_id ON agentgate.records (id text_pattern_ops);
CREATE INDEX records_by_time ON agentgate.records (ts_ms DESC);

CREATE TABLE agentgate.checkpoints (
    chain   text NOT NULL,
    n       bigint NOT NULL,
    replica text NOT NULL,
    line    text NOT NULL,
    PRIMARY KEY (chain, n)
);
"#];

/// The schema version this binary writes and reads.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// Brings the schema to `VERSION`, or says why not.
pub async fn migrate(client: &mut Client) -> Result<Migrated, String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: tokio_postgres::Error| format!("{what}: {}", super::describe(&err))
    };
    let tx = client
        .transaction()
        .await
        .map_err(e("starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await
        .map_err(e("taking the migration lock"))?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS agentgate;
         CREATE TABLE IF NOT EXISTS agentgate.schema_version (
             version integer PRIMARY KEY, applied_ms bigint NOT NULL)",
    )
    .await
    .map_err(e("creating the schema"))?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM agentgate.schema_version",
            &[],
        )
        .await
        .map_err(e("reading the schema version"))?
        .get(0);
    if found > VERSION {
        return Err(format!(
            "the database's agentgate schema is version {found}, newer than this agentgate knows ({VERSION}): \
             a newer agentgate migrated it. Run that version here too, or point store.postgres.url at another database"
        ));
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let v = n as i32 + 1;
        tx.batch_execute(sql)
            .await
            .map_err(e(&format!("schema migration {v}")))?;
        tx.execute(
            "INSERT INTO agentgate.schema_version (version, applied_ms) VALUES ($1, $2)",
            &[&v, &(crate::util::time::unix_ms() as i64)],
        )
        .await
        .map_err(e("recording the schema version"))?;
    }
    tx.commit().await.map_err(e("committing the migration"))?;
    Ok(Migrated {
        from: found,
        to: VERSION,
    })
}

/// What a migration did.
pub struct Migrated {
    pub from: i32,
    pub to: i32,
}

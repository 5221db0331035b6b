//! The PostgreSQL store that several replicas share (`store.postgres`): a pool of verified TLS
//! connections (`tls`), the versioned schema (`schema`), each process's lease, and one
//! `LISTEN` connection that tells this process what other replicas decided.
//!
//! All database work runs on a runtime of its own (two threads, `agentgate-db`), whatever
//! runtime asks for it: connections outlive any one Pingora service's runtime, and a slow
//! database never takes a proxy worker thread. Callers `await` the result from anywhere.
//!
//! Invariants: nothing here decides anything (approvals and records own their SQL); a
//! notification is a hint to read the database again, never a fact in itself (anyone who can
//! connect may `NOTIFY`); the process is not ready until the schema is known to be this
//! binary's.

pub mod schema;
pub mod tls;

use crate::config::PostgresStore;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// The channel decisions are announced on.
pub const APPROVALS_CHANNEL: &str = "agentgate_approvals";

/// An error from the database, as people read it (never the URL, which holds a password).
#[derive(Debug, Clone)]
pub struct DbError(pub String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError(describe(&e))
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError(match e {
            deadpool_postgres::PoolError::Backend(e) => describe(&e),
            deadpool_postgres::PoolError::Timeout(_) => {
                "no database connection within store.postgres.connect_timeout".into()
            }
            other => other.to_string(),
        })
    }
}

/// A tokio-postgres error with its cause (the database's own message when it sent one).
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("the database said: {} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(c) = src {
                let text = c.to_string();
                if !s.contains(&text) {
                    s.push_str(": ");
                    s.push_str(&text);
                }
                src = c.source();
            }
            s
        }
    }
}

/// Where the process stands with the database.
#[derive(Debug, Clone)]
enum Status {
    /// Not reached yet (the reason), still trying.
    Connecting(String),
    Ready,
    /// A schema this binary must not write (the reason); never ready.
    Refused(String),
}

/// A notification heard on `LISTEN`: the channel's payload, or `None` after the listening
/// connection was re-made (what was sent meanwhile is lost: read everything again).
#[derive(Debug, Clone)]
pub struct Notice {
    pub payload: Option<String>,
}

pub struct Database {
    pool: Pool,
    rt: tokio::runtime::Handle,
    /// This replica's name (`store.postgres.replica`, else the host name).
    pub replica: String,
    /// This process: a fresh id per start, the holder of the requests it keeps waiting.
    pub instance: String,
    pub lease: Duration,
    pub queue: usize,
    status: Mutex<Status>,
    notices: broadcast::Sender<Notice>,
    pg: tokio_postgres::Config,
    tls: Option<tls::BoringTls>,
}

/// What `open` is for: a server keeps a lease and listens; the CLI only queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or fails.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63)
        .collect();
    if name.is_empty() {
        "agentgate".into()
    } else {
        name
    }
}

impl Database {
    /// Builds the pool and, for a server, its lease and listener; tries the schema once. A
    /// database that cannot be reached leaves the process not ready (retried in the background);
    /// a schema newer than this binary's is an error.
    pub fn open(cfg: &PostgresStore, role: Role) -> Result<Arc<Database>, String> {
        let mut pg: tokio_postgres::Config = cfg
            .url
            .expose()
            .parse()
            .map_err(|e| format!("store.postgres.url: {e}"))?;
        pg.connect_timeout(cfg.connect_timeout);
        pg.application_name("agentgate");
        let tls = if cfg.tls {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
            Some(tls::BoringTls::new(cfg.ca_file.as_deref())?)
        } else {
            None
        };
        // A runtime for the life of the process (never dropped: dropping a runtime inside
        // another one's task panics, and this one serves until exit).
        let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("agentgate-db")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the database runtime: {e}"))?,
        ));
        let mgr_cfg = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = match &tls {
            Some(t) => Manager::from_config(pg.clone(), t.clone(), mgr_cfg),
            None => Manager::from_config(pg.clone(), tokio_postgres::NoTls, mgr_cfg),
        };
        let pool = Pool::builder(mgr)
            .max_size(cfg.pool)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(cfg.connect_timeout))
            .create_timeout(Some(cfg.connect_timeout))
            .recycle_timeout(Some(cfg.connect_timeout))
            .build()
            .map_err(|e| format!("store.postgres: {e}"))?;
        crate::metrics::STORE_POOL_CONNECTIONS
            .with_label_values(&["max"])
            .set(cfg.pool as i64);
        // Every family listed from the first scrape.
        for state in ["busy", "idle"] {
            crate::metrics::STORE_POOL_CONNECTIONS.with_label_values(&[state]);
        }
        std::sync::LazyLock::force(&crate::metrics::STORE_NOTIFY_LAG);
        std::sync::LazyLock::force(&crate::metrics::STORE_RECORD_QUEUE);
        std::sync::LazyLock::force(&crate::metrics::STORE_UP);
        let db = Arc::new(Database {
            pool,
            rt: rt.handle().clone(),
            replica: cfg.replica.clone().unwrap_or_else(hostname),
            instance: format!("{}-{}", hostname(), crate::util::hex::random_hex(6)),
            lease: cfg.lease,
            queue: cfg.queue,
            status: Mutex::new(Status::Connecting("not connected yet".into())),
            notices: broadcast::channel(1024).0,
            pg,
            tls,
        });
        match rt.block_on(db.clone().migrate()) {
            Ok(()) => {}
            Err(Status::Refused(why)) => return Err(format!("store.postgres: {why}")),
            Err(_) => {
                let why = db.not_ready().unwrap_or_default();
                log::warn!("store.postgres: {why}; not ready until it answers (retrying)");
                if role == Role::Client {
                    return Err(format!("store.postgres: {why}"));
                }
                let d = db.clone();
                rt.spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        match d.clone().migrate().await {
                            Ok(()) => return,
                            Err(Status::Refused(why)) => {
                                log::error!("store.postgres: {why}");
                                return;
                            }
                            Err(_) => {}
                        }
                    }
                });
            }
        }
        if role == Role::Server {
            rt.spawn(db.clone().listen());
            rt.spawn(db.clone().keep_lease());
        }
        Ok(db)
    }

    /// Runs the migrations; sets the status either way.
    async fn migrate(self: Arc<Self>) -> Result<(), Status> {
        let st = async {
            let mut c = self.pool.get().await.map_err(DbError::from)?;
            schema::migrate(&mut c).await.map_err(DbError)
        }
        .await;
        let status = match st {
            Ok(m) => {
                if m.from != m.to {
                    log::info!(
                        "store.postgres: schema migrated from version {} to {}",
                        m.from,
                        m.to
                    );
                }
                log::info!(
                    "store.postgres: connected as replica `{}` (schema version {})",
                    self.replica,
                    m.to
                );
                crate::metrics::STORE_UP.set(1);
                Status::Ready
            }
            Err(DbError(why)) if why.contains("newer than this agentgate knows") => {
                Status::Refused(why)
            }
            Err(DbError(why)) => {
                crate::metrics::STORE_UP.set(0);
                Status::Connecting(format!("the database is unreachable: {why}"))
            }
        };
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status.clone();
        match status {
            Status::Ready => Ok(()),
            s => Err(s),
        }
    }

    /// `Some(reason)` while the process must not be sent traffic.
    pub fn not_ready(&self) -> Option<String> {
        match &*self.status.lock().unwrap_or_else(|p| p.into_inner()) {
            Status::Ready => None,
            Status::Connecting(why) => Some(format!("store.postgres: {why}")),
            Status::Refused(why) => Some(format!("store.postgres: {why}")),
        }
    }

    /// Runs `f` with the pool on the database runtime; `op` names it in metrics.
    pub async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, DbError>> + Send + 'static,
    {
        if let Some(why) = self.not_ready() {
            return Err(DbError(why));
        }
        let started = Instant::now();
        let out = match self.rt.spawn(f(self.pool.clone())).await {
            Ok(r) => r,
            Err(e) => Err(DbError(format!("database task failed: {e}"))),
        };
        crate::metrics::STORE_QUERY_DURATION
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        let s = self.pool.status();
        crate::metrics::STORE_POOL_CONNECTIONS
            .with_label_values(&["busy"])
            .set(s.size.saturating_sub(s.available) as i64);
        crate::metrics::STORE_POOL_CONNECTIONS
            .with_label_values(&["idle"])
            .set(s.available as i64);
        match &out {
            Ok(_) => crate::metrics::STORE_UP.set(1),
            Err(_) => {
                crate::metrics::STORE_UP.set(0);
                crate::metrics::STORE_ERRORS.with_label_values(&[op]).inc();
            }
        }
        out
    }

    /// Runs `fut` to its end from a thread that is not in an async context (the CLI, the
    /// recorder's threads).
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// Runs `fut` in the background on the database runtime.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(fut);
    }

    /// Notifications heard from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// Keeps this process's lease: a row renewed every third of `lease`. Replicas treat a
    /// process whose lease ran out as gone (its waiting approvals are interrupted).
    async fn keep_lease(self: Arc<Self>) {
        let started = crate::util::time::unix_ms() as i64;
        let every = self.lease / 3;
        loop {
            let (inst, rep) = (self.instance.clone(), self.replica.clone());
            let renewed = self
                .run("lease", move |pool| async move {
                    let c = pool.get().await?;
                    let now = crate::util::time::unix_ms() as i64;
                    c.execute(
                        "INSERT INTO agentgate.instances (instance, replica, started_ms, seen_ms)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (instance) DO UPDATE SET seen_ms = EXCLUDED.seen_ms",
                        &[&inst, &rep, &started, &now],
                    )
                    .await?;
                    // Leases long gone are forgotten (a day: enough to tell what happened).
                    c.execute(
                        "DELETE FROM agentgate.instances WHERE seen_ms < $1",
                        &[&(now - 24 * 3600 * 1000)],
                    )
                    .await?;
                    Ok(())
                })
                .await;
            // After a failure, try again soon: other replicas judge this lease once they reach
            // the database again.
            let pause = if renewed.is_ok() {
                every
            } else {
                Duration::from_secs(1).min(every)
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// One connection that `LISTEN`s, re-made whenever it drops.
    async fn listen(self: Arc<Self>) {
        loop {
            let r = match self.tls.clone() {
                Some(t) => self.listen_once(t).await,
                None => self.listen_once(tokio_postgres::NoTls).await,
            };
            if let Err(e) = r {
                log::debug!("store.postgres: listening connection: {e}");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn listen_once<T>(&self, tls: T) -> Result<(), DbError>
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
        T::Stream: Send + 'static,
    {
        let (client, mut conn) = self.pg.connect(tls).await?;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let notices = self.notices.clone();
        // The connection is driven here; the client only sends LISTEN.
        let driver = tokio::spawn(async move {
            loop {
                let m = std::future::poll_fn(|cx| conn.poll_message(cx)).await;
                match m {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        let _ = notices.send(Notice {
                            payload: Some(n.payload().to_string()),
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
            let _ = tx.send(());
        });
        client
            .batch_execute(&format!("LISTEN {APPROVALS_CHANNEL}"))
            .await?;
        // What was announced while nobody listened is lost: everyone reads again.
        let _ = self.notices.send(Notice { payload: None });
        let _ = (&mut rx).await;
        driver.abort();
        Err(DbError("the listening connection closed".into()))
    }
}

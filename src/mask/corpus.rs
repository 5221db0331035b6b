//! A deterministic corpus of everyday agent traffic with no sensitive value in it: chat
//! requests with prose, code, logs, identifiers (UUIDs, git SHAs, hashes), base64 data, version
//! numbers, timestamps, URLs and paths. The negative test and the benchmark use it
//! (`chat_json`); `agent_traffic` adds what tools and agents carry besides (lockfiles, image
//! digests, manifests, tracebacks, access logs, diffs, CSV, hex dumps, ids of many shapes) for
//! the masking evaluation's false-positive count.
//! Test data, yet public (hidden from the docs): `benches/mask.rs` is a separate crate that
//! reaches it only through the library's public API.
#![doc(hidden)]

/// Deterministic test data (xorshift64*); the masking evaluation draws its values from it too.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, good enough for test data.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// `n` bytes drawn from `alphabet` (ASCII).
    pub(crate) fn from(&mut self, alphabet: &str, n: usize) -> String {
        let a = alphabet.as_bytes();
        (0..n)
            .map(|_| a[self.below(a.len() as u64) as usize] as char)
            .collect()
    }
    pub(crate) fn digits(&mut self, n: usize) -> String {
        self.from("0123456789", n)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| b"0123456789abcdef"[(self.next() % 16) as usize] as char)
            .collect()
    }
    fn b64(&mut self, n: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        (0..n)
            .map(|_| A[(self.next() % 64) as usize] as char)
            .collect()
    }
}

const PROSE: &[&str] = &[
    "The deployment finished without errors, but the latency graph shows a spike around noon.",
    "Could you refactor this function so that it returns early when the input is empty?",
    "I think the issue is that the cache is never invalidated after the config reload.",
    "Summarize the following meeting notes in three bullet points for the weekly update.",
    "Here is the stack trace from the failing test; it looks like a race in the worker pool.",
    "Translate the paragraph below into French, keeping the technical terms in English.",
    "We measured 14973 requests per second at concurrency 64, about 0.96 of the baseline.",
    "Write a unit test that covers the empty list, a single element and a long list.",
    "The quarterly report covers revenue, churn and the roadmap for the next two releases.",
    "Make sure the migration is idempotent; it may run twice during a rolling upgrade.",
];

const CODE: &[&str] = &[
    "fn parse(input: &str) -> Result<Vec<u32>, ParseIntError> {\n    input.split(',').map(|s| s.trim().parse()).collect()\n}",
    "def fibonacci(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    "SELECT id, name, created_at FROM orders WHERE status = 'open' ORDER BY created_at DESC LIMIT 50;",
    "const server = http.createServer((req, res) => { res.writeHead(200); res.end('ok'); });\nserver.listen(8080);",
    "for i in range(0, 10):\n    print(f\"step {i}: loss={0.5 / (i + 1):.4f}\")",
    "impl std::fmt::Display for Error {\n    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, \"{}\", self.0) }\n}",
    "kubectl rollout status deployment/api -n prod --timeout=120s && kubectl get pods -o wide",
    "docker run --rm -p 8443:8443 -v $PWD/conf:/etc/agentgate ghcr.io/example/agentgate:0.1.0",
];

const LOGS: &[&str] = &[
    "INFO pingora_core::server: Bootstrap done",
    "WARN worker 3 took 1523 ms to answer health check",
    "ERROR connection reset by peer while reading response header",
    "DEBUG cache hit ratio=0.934 entries=10240 evictions=12",
];

fn uuid(r: &mut Rng) -> String {
    format!(
        "{}-{}-4{}-a{}-{}",
        r.hex(8),
        r.hex(4),
        r.hex(3),
        r.hex(3),
        r.hex(12)
    )
}

fn chunk(r: &mut Rng) -> String {
    match r.next() % 9 {
        0..=2 => r.pick(PROSE).to_string(),
        3..=4 => format!("```\n{}\n```", r.pick(CODE)),
        5 => format!(
            "2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z {} request_id={} trace={}",
            1 + r.next() % 28,
            r.next() % 24,
            r.next() % 60,
            r.next() % 60,
            r.next() % 1000,
            r.pick(LOGS),
            r.hex(32),
            uuid(r)
        ),
        6 => format!(
            "commit {} (tag v{}.{}.{}) sha256:{} see https://git.example.internal/{}/pull/{}",
            r.hex(40),
            r.next() % 10,
            r.next() % 100,
            r.next() % 100,
            r.hex(64),
            r.pick(&["api", "web", "infra"]),
            r.next() % 9000 + 100
        ),
        7 => format!("data:image/png;base64,{}==", r.b64(400)),
        _ => format!(
            "path=/var/lib/app/{}/{}.json size={} took={}ms items={:?}",
            r.pick(&["cache", "data", "tmp"]),
            uuid(r),
            r.next() % 100_000,
            r.next() % 5000,
            [r.next() % 1000, r.next() % 1000, r.next() % 1000]
        ),
    }
}

/// What tools and agents carry besides prose, code and logs; no sensitive value in any.
fn tool_chunk(r: &mut Rng) -> String {
    match r.next() % 10 {
        0 => format!(
            "\"node_modules/{name}\": {{\"version\": \"{}.{}.{}\", \"resolved\": \"https://registry.npmjs.org/{name}/-/{name}-1.0.0.tgz\", \"integrity\": \"sha512-{}==\"}}",
            r.next() % 10,
            r.next() % 30,
            r.next() % 30,
            r.b64(86),
            name = r.pick(&["lodash", "react-dom", "@types/node", "typescript", "zod"])
        ),
        1 => format!(
            "image: ghcr.io/example/{}@sha256:{}\nreplicas: {}\nresources: {{limits: {{cpu: {}m, memory: {}Mi}}}}",
            r.pick(&["api", "worker", "gateway"]),
            r.hex(64),
            1 + r.next() % 9,
            100 * (1 + r.next() % 9),
            64 * (1 + r.next() % 16)
        ),
        2 => format!(
            "Traceback (most recent call last):\n  File \"/app/{}.py\", line {}, in run\n    result = handler(payload)\nKeyError: '{}'",
            r.pick(&["worker", "tasks", "views"]),
            1 + r.next() % 900,
            r.pick(&["user_id", "session", "items"])
        ),
        3 => format!(
            "127.0.0.1 - - [29/Nov/2026:{:02}:{:02}:{:02} +0000] \"{} /v1/{} HTTP/1.1\" {} {} \"-\" \"python-requests/2.{}.0\"",
            r.next() % 24,
            r.next() % 60,
            r.next() % 60,
            r.pick(&["GET", "POST"]),
            r.pick(&["models", "chat/completions", "embeddings"]),
            r.pick(&["200", "201", "404", "429"]),
            r.next() % 100_000,
            r.next() % 32
        ),
        4 => format!(
            "diff --git a/src/{f} b/src/{f}\nindex {}..{} 100644\n--- a/src/{f}\n+++ b/src/{f}\n@@ -{},7 +{},8 @@ fn main() {{\n-    let n = 1;\n+    let n = 2;",
            r.hex(7),
            r.hex(7),
            1 + r.next() % 400,
            1 + r.next() % 400,
            f = r.pick(&["lib.rs", "main.go", "app.ts"])
        ),
        5 => {
            let rows: Vec<String> = (0..4)
                .map(|_| {
                    format!(
                        "2026-11-{:02} {:02}:{:02}:{:02},{},{}",
                        1 + r.next() % 28,
                        r.next() % 24,
                        r.next() % 60,
                        r.next() % 60,
                        r.next() % 900,
                        r.pick(&["200", "500", "503"])
                    )
                })
                .collect();
            format!("timestamp,latency_ms,status\n{}", rows.join("\n"))
        }
        6 => {
            let line = |r: &mut Rng, at: u64| {
                let words: Vec<String> = (0..8).map(|_| r.hex(4)).collect();
                format!("{at:08x}: {}  ................", words.join(" "))
            };
            let a = r.next() % 4096 * 16;
            format!("{}\n{}", line(r, a), line(r, a + 16))
        }
        7 => format!(
            "ulid={} object_id={} request={} span={} build={}",
            r.pick(&["01HF8Z2X3Y4K5M6N7P8Q9R0S1T", "01JD3QWERTY0ASDFGHJKLZXCVB"]),
            r.hex(24),
            uuid(r),
            r.hex(16),
            r.next() % 100_000
        ),
        8 => format!(
            "| endpoint | p50 | p99 | rps |\n| --- | ---: | ---: | ---: |\n| /v1/chat | {} ms | {} ms | {} |\n| /v1/embeddings | {} ms | {} ms | {} |",
            r.next() % 100,
            r.next() % 1000,
            r.next() % 20_000,
            r.next() % 100,
            r.next() % 1000,
            r.next() % 20_000
        ),
        _ => format!(
            "func (s *Server) Handle{}(w http.ResponseWriter, req *http.Request) {{\n\tctx, cancel := context.WithTimeout(req.Context(), {}*time.Second)\n\tdefer cancel()\n\tif err := s.store.Put(ctx, \"{}\"); err != nil {{ http.Error(w, err.Error(), 500) }}\n}}",
            r.pick(&["Create", "Delete", "List"]),
            1 + r.next() % 30,
            r.hex(12)
        ),
    }
}

/// About `bytes` of chat-completion request JSON as `chat_json` makes it, and with every other
/// message's pieces what tools carry (`tool_chunk`); no sensitive value.
pub fn agent_traffic(bytes: usize, seed: u64) -> String {
    messages(bytes, seed, true)
}

/// About `bytes` of chat-completion request JSON, many messages, no sensitive value.
pub fn chat_json(bytes: usize, seed: u64) -> String {
    messages(bytes, seed, false)
}

fn messages(bytes: usize, seed: u64, tools: bool) -> String {
    let mut r = Rng(seed | 1);
    let mut messages = Vec::new();
    let mut size = 0;
    while size < bytes {
        let n = 1 + r.next() % 4;
        let with_tools = tools && messages.len() % 2 == 1;
        let content: Vec<String> = (0..n)
            .map(|_| {
                if with_tools {
                    tool_chunk(&mut r)
                } else {
                    chunk(&mut r)
                }
            })
            .collect();
        let content = content.join("\n\n");
        size += content.len() + 40;
        let role = if messages.len() % 2 == 0 {
            "user"
        } else {
            "assistant"
        };
        messages.push(serde_json::json!({"role": role, "content": content}));
    }
    serde_json::json!({"model": "gpt-4o", "temperature": 0.2, "stream": true, "messages": messages})
        .to_string()
}

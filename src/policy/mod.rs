//! Approval rules: which requests wait for a human (`approvals:` in the YAML). Pure: a rule is
//! compiled once from the file, and `ApprovalRule::matches` looks at one request (route,
//! method, path, the caller's groups, headers and the JSON body) with no I/O.
//!
//! Every predicate of a rule's `when` must hold. A JSON predicate holds when any value its
//! path selects satisfies the matcher; a path that selects nothing does not hold. A body that
//! is not JSON (or not UTF-8) when a rule has JSON predicates *matches*: the gateway cannot
//! tell, so a human decides (fail closed), and the approver sees why.

mod path;

#[cfg(test)]
mod tests;

pub use path::JsonPath;

use regex_automata::meta::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How an approved rule lets later requests through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The approval lets exactly the request that asked for it through.
    Once,
    /// Also every later request of the same identity matching the same rule, for this long.
    Window(Duration),
}

/// How the agent waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The agent's HTTP call is held open until a decision (or the timeout).
    Wait,
    /// The agent gets 202 with an approval id at once and retries with `x-agentgate-approval`.
    Ticket,
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    /// `slack` (a Slack-compatible `text` + `blocks` message) or `json` (the summary as is).
    pub slack: bool,
    /// Extra CA bundle for the webhook's TLS (besides the system roots).
    pub ca_file: Option<std::path::PathBuf>,
}

/// A compiled `approvals:` entry.
#[derive(Debug, Clone)]
pub struct ApprovalRule {
    pub name: String,
    pub when: When,
    pub approver_groups: Vec<String>,
    pub min_approvals: usize,
    pub timeout: Duration,
    pub grant: Grant,
    pub mode: Mode,
    pub webhook: Option<Webhook>,
}

/// A value test.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// The value (a string, number or boolean, as text) is one of these.
    AnyOf(Vec<String>),
    /// Some string in the value (at any depth) contains this, ASCII case-insensitively.
    Contains(String),
    /// Some string in the value (at any depth) matches this regular expression.
    Regex(Box<Regex>),
    /// The path selects something (true) or nothing (false).
    Exists(bool),
}

#[derive(Debug, Clone, Default)]
pub struct When {
    pub routes: Vec<String>,
    /// Upper-case method names; empty: any.
    pub methods: Vec<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    /// The caller is in one of these groups; empty: anyone.
    pub groups: Vec<String>,
    /// Lower-case header name → test of its value (absent headers do not match unless
    /// `exists: false`).
    pub headers: Vec<(String, Matcher)>,
    pub json: Vec<(JsonPath, Matcher)>,
    /// JSON-RPC (MCP) messages in the body: at least one must match.
    pub mcp: Option<McpWhen>,
}

/// `when.mcp`: a JSON-RPC request in the body (one message or any of a batch) whose method,
/// tool (`params.name`) and arguments (paths inside `params.arguments`) all match.
#[derive(Debug, Clone, Default)]
pub struct McpWhen {
    /// Empty: any method.
    pub methods: Vec<String>,
    pub tool: Option<Matcher>,
    pub arguments: Vec<(JsonPath, Matcher)>,
}

impl McpWhen {
    /// Why the first matching message of `doc` matches, if one does.
    fn matches(&self, doc: &serde_json::Value) -> Option<Vec<String>> {
        let messages: &[serde_json::Value] = match doc {
            serde_json::Value::Array(a) => a,
            one => std::slice::from_ref(one),
        };
        messages.iter().find_map(|m| self.matches_one(m))
    }

    fn matches_one(&self, m: &serde_json::Value) -> Option<Vec<String>> {
        let method = m.get("method")?.as_str()?;
        if !self.methods.is_empty() && !self.methods.iter().any(|x| x == method) {
            return None;
        }
        let mut reasons = vec![format!("mcp method = {method}")];
        if let Some(t) = &self.tool {
            let name = m.pointer("/params/name");
            match (t, name) {
                (Matcher::Exists(want), n) if n.is_some() == *want => {}
                (Matcher::Exists(_), _) => return None,
                (t, Some(n)) if t.test_scalar(n) => {
                    reasons.push(format!("mcp tool = {}", excerpt(n)))
                }
                _ => return None,
            }
        }
        let args = m.pointer("/params/arguments");
        for (path, matcher) in &self.arguments {
            let mut hit = None;
            let mut any = false;
            if let Some(args) = args {
                path.select(args, &mut |at, v| {
                    any = true;
                    if hit.is_none()
                        && !matches!(matcher, Matcher::Exists(_))
                        && matcher.test_scalar(v)
                    {
                        hit = Some(format!("mcp arguments.{at} = {}", excerpt(v)));
                    }
                });
            }
            match matcher {
                Matcher::Exists(want) if any == *want => reasons.push(format!(
                    "mcp arguments.{path} {}",
                    if *want { "is present" } else { "is absent" }
                )),
                Matcher::Exists(_) => return None,
                _ => reasons.push(hit?),
            }
        }
        Some(reasons)
    }
}

/// The request as rule matching sees it.
pub struct Request<'a> {
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub groups: &'a [String],
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
}

/// Why a rule matched, for the approver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub rule: String,
    /// What the JSON predicates selected (e.g. `tools[1].function.name = delete_records`), or
    /// why the body could not be read.
    pub reasons: Vec<String>,
}

impl Matcher {
    fn test_scalar(&self, v: &serde_json::Value) -> bool {
        match (self, v) {
            (Matcher::AnyOf(set), serde_json::Value::String(s)) => set.iter().any(|x| x == s),
            (
                Matcher::AnyOf(set),
                v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)),
            ) => {
                let s = v.to_string();
                set.contains(&s)
            }
            (Matcher::Contains(_) | Matcher::Regex(_), _) => {
                let mut hit = false;
                each_string(v, &mut |s| hit = hit || self.test_str(s));
                hit
            }
            (Matcher::Exists(want), _) => *want,
            _ => false,
        }
    }

    fn test_str(&self, s: &str) -> bool {
        match self {
            Matcher::AnyOf(set) => set.iter().any(|x| x == s),
            Matcher::Contains(needle) => contains_ignore_case(s, needle),
            Matcher::Regex(re) => re.is_match(s),
            Matcher::Exists(want) => *want,
        }
    }
}

fn contains_ignore_case(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// Calls `f` with every string inside `v` (object keys excluded).
fn each_string<'v>(v: &'v serde_json::Value, f: &mut impl FnMut(&'v str)) {
    match v {
        serde_json::Value::String(s) => f(s),
        serde_json::Value::Array(a) => a.iter().for_each(|x| each_string(x, f)),
        serde_json::Value::Object(o) => o.values().for_each(|x| each_string(x, f)),
        _ => {}
    }
}

/// At most this many characters of a selected value go into a reason.
const REASON_VALUE_CHARS: usize = 80;

impl ApprovalRule {
    /// Whether `req` must wait for this rule's approvers, and why. `parsed` is the body as
    /// JSON, parsed once by the caller for all rules (`None`: not JSON).
    pub fn matches(&self, req: &Request, parsed: Option<&serde_json::Value>) -> Option<Match> {
        if !self.head_matches(req) {
            return None;
        }
        let w = &self.when;
        let mut reasons = Vec::new();
        if !w.json.is_empty() {
            let Some(doc) = parsed else {
                reasons.push(
                    "the body is not JSON, so the rule's JSON conditions could not be checked"
                        .into(),
                );
                return Some(Match {
                    rule: self.name.clone(),
                    reasons,
                });
            };
            for (path, m) in &w.json {
                let mut hit = None;
                let mut any = false;
                path.select(doc, &mut |at, v| {
                    any = true;
                    if hit.is_none() && !matches!(m, Matcher::Exists(_)) && m.test_scalar(v) {
                        hit = Some(format!("{at} = {}", excerpt(v)));
                    }
                });
                match m {
                    Matcher::Exists(want) if any == *want => reasons.push(format!(
                        "{path} {}",
                        if *want { "is present" } else { "is absent" }
                    )),
                    Matcher::Exists(_) => return None,
                    _ => reasons.push(hit?),
                }
            }
        }
        if let Some(mcp) = &w.mcp {
            let Some(doc) = parsed else {
                reasons.push(
                    "the body is not JSON, so the rule's MCP conditions could not be checked"
                        .into(),
                );
                return Some(Match {
                    rule: self.name.clone(),
                    reasons,
                });
            };
            reasons.extend(mcp.matches(doc)?);
        }
        Some(Match {
            rule: self.name.clone(),
            reasons,
        })
    }

    /// Whether everything but the body matches (`req.body` is not looked at): when no rule's
    /// head matches, the gateway need not read the body at all.
    pub fn head_matches(&self, req: &Request) -> bool {
        let w = &self.when;
        if !w.routes.is_empty() && !w.routes.iter().any(|r| r == req.route) {
            return false;
        }
        if !w.methods.is_empty() && !w.methods.iter().any(|m| m.eq_ignore_ascii_case(req.method)) {
            return false;
        }
        if w.path.as_deref().is_some_and(|p| p != req.path) {
            return false;
        }
        if w.path_prefix
            .as_deref()
            .is_some_and(|p| !req.path.starts_with(p))
        {
            return false;
        }
        if !w.groups.is_empty() && !w.groups.iter().any(|g| req.groups.contains(g)) {
            return false;
        }
        for (name, m) in &w.headers {
            let values: Vec<&str> = req
                .headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let ok = match m {
                Matcher::Exists(want) => values.is_empty() != *want,
                _ => values.iter().any(|v| m.test_str(v)),
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

fn excerpt(v: &serde_json::Value) -> String {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > REASON_VALUE_CHARS {
        let cut: String = s.chars().take(REASON_VALUE_CHARS).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// Parses a body for rule matching: `None` when it is not JSON.
pub fn parse_body(body: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice(body).ok()
}

/// The rules of `names` that match `req`, in the order given.
pub fn matching<'r>(rules: &'r [ApprovalRule], req: &Request) -> Vec<(&'r ApprovalRule, Match)> {
    if rules.is_empty() {
        return Vec::new();
    }
    let needs_json = rules
        .iter()
        .any(|r| !r.when.json.is_empty() || r.when.mcp.is_some());
    let parsed = if needs_json {
        parse_body(req.body)
    } else {
        None
    };
    rules
        .iter()
        .filter_map(|r| r.matches(req, parsed.as_ref()).map(|m| (r, m)))
        .collect()
}

// ---- the file format ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovalRule {
    name: String,
    #[serde(default)]
    when: RawWhen,
    approvers: RawApprovers,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    grant: Option<RawGrant>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    notify: Option<RawNotify>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    #[serde(default)]
    route: OneOrMany,
    #[serde(default)]
    method: OneOrMany,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    headers: BTreeMap<String, RawMatcher>,
    #[serde(default)]
    json: BTreeMap<String, RawMatcher>,
    #[serde(default)]
    mcp: Option<RawMcpWhen>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMcpWhen {
    #[serde(default)]
    method: OneOrMany,
    #[serde(default)]
    tool: Option<RawMatcher>,
    #[serde(default)]
    arguments: BTreeMap<String, RawMatcher>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatcher {
    #[serde(default)]
    any_of: Option<Vec<serde_yaml::Value>>,
    #[serde(default)]
    equals: Option<serde_yaml::Value>,
    #[serde(default)]
    contains: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    exists: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovers {
    groups: Vec<String>,
    #[serde(default = "one")]
    min_approvals: usize,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    scope: String,
    #[serde(default)]
    duration: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    webhook: RawWebhook,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    ca_file: Option<std::path::PathBuf>,
}

/// The longest a request may be held (the agent's HTTP client must wait that long too).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

fn scalar_text(v: &serde_yaml::Value) -> Result<String, String> {
    match v {
        serde_yaml::Value::String(s) => Ok(s.clone()),
        serde_yaml::Value::Number(n) => Ok(n.to_string()),
        serde_yaml::Value::Bool(b) => Ok(b.to_string()),
        _ => Err("matcher values must be strings, numbers or booleans".into()),
    }
}

fn compile_matcher(what: &str, m: RawMatcher) -> Result<Matcher, String> {
    let mut out = Vec::new();
    if let Some(v) = m.any_of {
        out.push(Matcher::AnyOf(
            v.iter().map(scalar_text).collect::<Result<_, _>>()?,
        ));
    }
    if let Some(v) = m.equals {
        out.push(Matcher::AnyOf(vec![scalar_text(&v)?]));
    }
    if let Some(s) = m.contains {
        if s.is_empty() {
            return Err(format!("{what}: `contains` is empty"));
        }
        out.push(Matcher::Contains(s));
    }
    if let Some(r) = m.regex {
        let re = Regex::new(&r).map_err(|e| format!("{what}: regex `{r}`: {e}"))?;
        out.push(Matcher::Regex(Box::new(re)));
    }
    if let Some(e) = m.exists {
        out.push(Matcher::Exists(e));
    }
    match out.len() {
        1 => Ok(out.pop().expect("one")),
        0 => Err(format!(
            "{what}: say one of any_of, equals, contains, regex, exists"
        )),
        _ => Err(format!(
            "{what}: say only one of any_of, equals, contains, regex, exists"
        )),
    }
}

impl TryFrom<RawApprovalRule> for ApprovalRule {
    type Error = String;
    fn try_from(r: RawApprovalRule) -> Result<Self, String> {
        let name = r.name;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "approval rule name `{name}` must use letters, digits, - and _"
            ));
        }
        let rule = |m: String| format!("approval rule `{name}`: {m}");
        let w = r.when;
        let mut headers = Vec::new();
        for (h, m) in w.headers {
            http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| rule(format!("`{h}` is not a header name")))?;
            headers.push((
                h.to_ascii_lowercase(),
                compile_matcher(&rule(format!("header `{h}`")), m)?,
            ));
        }
        let mut json = Vec::new();
        for (p, m) in w.json {
            let path = JsonPath::parse(&p).map_err(|e| rule(format!("json path `{p}`: {e}")))?;
            json.push((path, compile_matcher(&rule(format!("json `{p}`")), m)?));
        }
        let mcp = match w.mcp {
            None => None,
            Some(m) => {
                let tool = match m.tool {
                    Some(t) => Some(compile_matcher(&rule("mcp.tool".into()), t)?),
                    None => None,
                };
                let mut arguments = Vec::new();
                for (p, matcher) in m.arguments {
                    let path = JsonPath::parse(&p)
                        .map_err(|e| rule(format!("mcp.arguments path `{p}`: {e}")))?;
                    arguments.push((
                        path,
                        compile_matcher(&rule(format!("mcp.arguments `{p}`")), matcher)?,
                    ));
                }
                Some(McpWhen {
                    methods: m.method.into_vec(),
                    tool,
                    arguments,
                })
            }
        };
        let when = When {
            mcp,
            routes: w.route.into_vec(),
            methods: w
                .method
                .into_vec()
                .into_iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
            path: w.path,
            path_prefix: w.path_prefix,
            groups: w.groups,
            headers,
            json,
        };
        if r.approvers.groups.is_empty() {
            return Err(rule(
                "`approvers.groups` is empty: nobody could approve".into(),
            ));
        }
        if r.approvers.min_approvals == 0 {
            return Err(rule("`approvers.min_approvals` must be at least 1".into()));
        }
        let timeout = match r.timeout {
            Some(t) => crate::config::units::parse_duration(&t).map_err(rule)?,
            None => DEFAULT_TIMEOUT,
        };
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(rule(format!(
                "timeout {timeout:?} must be between 1s and 24h"
            )));
        }
        let grant = match r.grant {
            None => Grant::Once,
            Some(g) => match (g.scope.as_str(), g.duration) {
                ("once", None) => Grant::Once,
                ("window", Some(d)) => {
                    let d = crate::config::units::parse_duration(&d).map_err(rule)?;
                    if d.is_zero() {
                        return Err(rule("a window grant needs a duration above 0".into()));
                    }
                    Grant::Window(d)
                }
                ("window", None) => {
                    return Err(rule("`grant: { scope: window }` needs a `duration`".into()))
                }
                ("once", Some(_)) => {
                    return Err(rule("`grant: { scope: once }` takes no duration".into()))
                }
                (o, _) => return Err(rule(format!("grant scope `{o}` must be once or window"))),
            },
        };
        let mode = match r.mode.as_deref() {
            None | Some("wait") => Mode::Wait,
            Some("ticket") => Mode::Ticket,
            Some(o) => return Err(rule(format!("mode `{o}` must be wait or ticket"))),
        };
        let webhook = match r.notify {
            None => None,
            Some(n) => {
                let url = n.webhook.url;
                if !url.starts_with("https://") {
                    return Err(rule(format!("webhook URL `{url}` must be https://")));
                }
                url.parse::<http::Uri>()
                    .map_err(|e| rule(format!("webhook URL `{url}`: {e}")))?;
                let slack = match n.webhook.format.as_deref() {
                    None | Some("slack") => true,
                    Some("json") => false,
                    Some(o) => {
                        return Err(rule(format!("webhook format `{o}` must be slack or json")))
                    }
                };
                Some(Webhook {
                    url,
                    slack,
                    ca_file: n.webhook.ca_file,
                })
            }
        };
        Ok(ApprovalRule {
            name,
            when,
            approver_groups: r.approvers.groups,
            min_approvals: r.approvers.min_approvals,
            timeout,
            grant,
            mode,
            webhook,
        })
    }
}

impl<'de> Deserialize<'de> for ApprovalRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawApprovalRule::deserialize(d)?
            .try_into()
            .map_err(serde::de::Error::custom)
    }
}

//! The control API's requests: one type per body and the query keys of
//! each route, shared by the CLI that sends them and the handlers that
//! read them. A body field or query key a request does not define is
//! refused with its name, so that a misspelling can never be read as "not
//! given" (a rule for every port, a flush of every flow).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::http::Request;
use super::{ErrorKind, Reply, error};

/// A value a request may give as a JSON string or number (`"443"`, `443`,
/// `"8000-8100"`, `"tcp"`, `6`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    Number(u64),
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Number(n) => write!(f, "{n}"),
            Scalar::Text(s) => f.write_str(s),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DirectionName {
    Ingress,
    Egress,
}

/// `POST /v1/rules`: one rule for one peer (`group:NAME`, `cidr:CIDR`,
/// `prefix-list:NAME` or `host`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleAdd {
    pub group: String,
    pub direction: DirectionName,
    pub proto: Scalar,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<Scalar>,
    pub peer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `DELETE /v1/rules`: a rule by its id, or by the fields of `RuleAdd`
/// but `description` (the peer is revoked from every rule that matches).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleRemove {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<DirectionName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// `POST /v1/endpoints`: add an endpoint, or replace the one of that name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointAdd {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Whether a change request asks only what it would change
/// (`dry_run=true`; `false` or no key: it changes).
pub fn dry_run(req: &Request) -> Result<bool, Reply> {
    match req.query.iter().find(|(k, _)| k == "dry_run").map(|(_, v)| v.as_str()) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(error(
            ErrorKind::BadRequest,
            format!("dry_run: \"{other}\" is not true or false"),
        )),
    }
}

/// Refuses a query with a key `allowed` does not list, or a key given
/// twice.
pub fn check_query(req: &Request, allowed: &[&str]) -> Result<(), Reply> {
    for (i, (key, _)) in req.query.iter().enumerate() {
        if !allowed.contains(&key.as_str()) {
            let expected = if allowed.is_empty() {
                format!("{} takes no query", req.path)
            } else {
                format!("expected {}", allowed.join(", "))
            };
            return Err(error(
                ErrorKind::BadRequest,
                format!("unknown query key \"{key}\" ({expected})"),
            ));
        }
        if req.query[..i].iter().any(|(k, _)| k == key) {
            return Err(error(
                ErrorKind::BadRequest,
                format!("query key \"{key}\" given more than once"),
            ));
        }
    }
    Ok(())
}

/// A request body as `T`: JSON with exactly `T`'s fields (an unknown one
/// is refused by name).
pub fn body<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, Reply> {
    serde_json::from_slice(&req.body).map_err(|e| {
        let kind = if e.is_syntax() || e.is_eof() {
            ErrorKind::BadRequest
        } else {
            ErrorKind::Invalid
        };
        error(kind, format!("the request body: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &[(&str, &str)], body: &str) -> Request {
        Request {
            method: "POST".into(),
            path: "/v1/rules".into(),
            query: query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_misspelled_field_is_refused_by_name() {
        let req = request(
            &[],
            r#"{"group": "web", "direction": "ingress", "proto": "tcp", "port": 443, "peer": "host"}"#,
        );
        let (status, v) = body::<RuleAdd>(&req).unwrap_err();
        assert_eq!(status, 422);
        let message = v["error"].as_str().unwrap();
        assert!(message.contains("unknown field `port`"), "{message}");
        assert!(message.contains("`ports`"), "{message}");
    }

    #[test]
    fn ports_and_protocols_are_strings_or_numbers() {
        let req = request(
            &[],
            r#"{"group": "web", "direction": "egress", "proto": 6, "ports": "8000-8100", "peer": "host"}"#,
        );
        let r: RuleAdd = body(&req).unwrap();
        assert_eq!(r.proto.to_string(), "6");
        assert_eq!(r.ports.unwrap().to_string(), "8000-8100");
        let (status, v) = body::<RuleAdd>(&request(&[], r#"{"group": "web", "direction": "sideways"}"#)).unwrap_err();
        assert_eq!(status, 422);
        assert!(v["error"].as_str().unwrap().contains("sideways"));
        assert_eq!(body::<RuleAdd>(&request(&[], "{")).unwrap_err().0, 400);
    }

    #[test]
    fn what_the_cli_sends_is_what_the_server_reads() {
        let add = RuleAdd {
            group: "web".into(),
            direction: DirectionName::Ingress,
            proto: Scalar::Text("tcp".into()),
            ports: Some(Scalar::Text("443".into())),
            icmp_type: None,
            icmp_code: None,
            peer: "cidr:10.0.0.0/8".into(),
            description: Some("https".into()),
        };
        let req = request(&[], &serde_json::to_string(&add).unwrap());
        assert_eq!(body::<RuleAdd>(&req).unwrap(), add);
        let remove = RuleRemove {
            id: Some(7),
            ..Default::default()
        };
        let req = request(&[], &serde_json::to_string(&remove).unwrap());
        assert_eq!(body::<RuleRemove>(&req).unwrap(), remove);
        // A removal names no description: the rule's identity is its match.
        let req = request(&[], r#"{"id": 7, "description": "x"}"#);
        assert!(body::<RuleRemove>(&req).is_err());
    }

    #[test]
    fn unknown_and_repeated_query_keys_are_refused() {
        let (status, v) = check_query(
            &request(&[("adr", "10.0.0.1")], ""),
            &["addr", "port", "proto", "endpoint"],
        )
        .unwrap_err();
        assert_eq!(status, 400);
        let message = v["error"].as_str().unwrap();
        assert!(message.contains("\"adr\""), "{message}");
        assert!(message.contains("addr, port, proto, endpoint"), "{message}");
        let twice = request(&[("addr", "10.0.0.1"), ("addr", "10.0.0.2")], "");
        assert!(
            check_query(&twice, &["addr", "port", "proto", "endpoint"])
                .unwrap_err()
                .1["error"]
                .as_str()
                .unwrap()
                .contains("more than once")
        );
        assert!(
            check_query(
                &request(&[("addr", "10.0.0.1"), ("port", "22")], ""),
                &["addr", "port", "proto", "endpoint"]
            )
            .is_ok()
        );
        let (_, v) = check_query(&request(&[("verbose", "1")], ""), &[]).unwrap_err();
        assert!(v["error"].as_str().unwrap().contains("takes no query"));
    }
}

//! `GET /api/v1/openapi.json`: the OpenAPI 3.0 document of the management API.
//!
//! The paths come from the operation table ([`Op::ALL`]) the router is built from, and every
//! operation's documentation comes from one exhaustive `match`, so a new operation cannot be
//! served undocumented (or documented unserved). The schemas are written by hand next to it and
//! mirror the `XxxView` and request body types.

use axum::Json;
use serde_json::{Map, Value, json};

use super::{Op, PREFIX};

/// Who may call an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Auth {
    /// No credentials needed (or looked at).
    None,
    /// Anonymous callers are served too (with less).
    Optional,
    /// Credentials required.
    Required,
}

/// What a successful answer carries.
#[derive(Clone, Copy, Debug)]
enum Body {
    /// Nothing (204).
    Empty,
    /// One object of a schema.
    One(&'static str),
    /// A page of objects of a schema (with `n`/`last` and a `Link` header).
    Page(&'static str),
}

/// The documentation of one operation.
#[derive(Clone, Copy, Debug)]
struct OpDoc {
    tag: &'static str,
    summary: &'static str,
    auth: Auth,
    request: Option<&'static str>,
    status: u16,
    body: Body,
}

const fn doc(
    tag: &'static str,
    summary: &'static str,
    auth: Auth,
    request: Option<&'static str>,
    status: u16,
    body: Body,
) -> OpDoc {
    OpDoc {
        tag,
        summary,
        auth,
        request,
        status,
        body,
    }
}

fn describe(op: Op) -> OpDoc {
    use Auth::{None as Anyone, Optional, Required};
    use Body::{Empty, One, Page};
    match op {
        Op::CreateToken => doc(
            "auth",
            "Exchange a username and password for an API token",
            Anyone,
            Some("TokenRequest"),
            200,
            One("Token"),
        ),
        Op::CreateUser => doc(
            "users",
            "Create a user (site admins; anyone when self-signup is enabled)",
            Optional,
            Some("NewUser"),
            201,
            One("User"),
        ),
        Op::ListUsers => doc(
            "users",
            "List users (site admins)",
            Required,
            None,
            200,
            Page("User"),
        ),
        Op::GetUser => doc(
            "users",
            "Show a user (email only to the user and site admins)",
            Required,
            None,
            200,
            One("User"),
        ),
        Op::UpdateUser => doc(
            "users",
            "Change a user's email or password (the user or a site admin) or admin flag (site admins)",
            Required,
            Some("UserUpdate"),
            200,
            One("User"),
        ),
        Op::DeleteUser => doc("users", "Delete a user", Required, None, 204, Empty),
        Op::GetCurrentUser => doc("users", "Show the caller", Required, None, 200, One("User")),
        Op::ChangePassword => doc(
            "users",
            "Change the caller's password",
            Required,
            Some("PasswordChange"),
            204,
            Empty,
        ),
        Op::CreateApiKey => doc(
            "api-keys",
            "Create an API key (its secret is shown only in this answer)",
            Required,
            Some("NewApiKey"),
            201,
            One("CreatedApiKey"),
        ),
        Op::ListApiKeys => doc(
            "api-keys",
            "List the caller's API keys (without secrets)",
            Required,
            None,
            200,
            Page("ApiKey"),
        ),
        Op::RevokeApiKey => doc("api-keys", "Revoke an API key", Required, None, 204, Empty),
        Op::ListRefreshTokens => doc(
            "refresh-tokens",
            "List the caller's refresh tokens (docker login identity tokens; without secrets)",
            Required,
            None,
            200,
            Page("RefreshToken"),
        ),
        Op::RevokeRefreshToken => doc(
            "refresh-tokens",
            "Revoke a refresh token and the registry tokens minted from it",
            Required,
            None,
            204,
            Empty,
        ),
        Op::CreateOrg => doc(
            "orgs",
            "Create an organization (the caller becomes its owner)",
            Required,
            Some("NewOrg"),
            201,
            One("Org"),
        ),
        Op::ListOrgs => doc(
            "orgs",
            "List the caller's organizations (all for site admins)",
            Required,
            None,
            200,
            Page("Org"),
        ),
        Op::GetOrg => doc(
            "orgs",
            "Show an organization",
            Required,
            None,
            200,
            One("Org"),
        ),
        Op::DeleteOrg => doc(
            "orgs",
            "Delete an organization (owners); its repositories keep the name reserved",
            Required,
            None,
            204,
            Empty,
        ),
        Op::ListOrgMembers => doc(
            "orgs",
            "List an organization's members",
            Required,
            None,
            200,
            Page("Member"),
        ),
        Op::AddOrgMember => doc(
            "orgs",
            "Add a member (org admins; only owners grant owner)",
            Required,
            Some("NewMember"),
            201,
            One("Member"),
        ),
        Op::SetOrgMember => doc(
            "orgs",
            "Add a member or change their role (org admins; only owners grant or take owner)",
            Required,
            Some("MemberRole"),
            204,
            Empty,
        ),
        Op::RemoveOrgMember => doc(
            "orgs",
            "Remove a member (org admins, or the member leaving)",
            Required,
            None,
            204,
            Empty,
        ),
        Op::CreateTeam => doc(
            "teams",
            "Create a team (org admins)",
            Required,
            Some("NewTeam"),
            201,
            One("Team"),
        ),
        Op::ListTeams => doc("teams", "List teams", Required, None, 200, Page("Team")),
        Op::DeleteTeam => doc(
            "teams",
            "Delete a team (org admins)",
            Required,
            None,
            204,
            Empty,
        ),
        Op::ListTeamMembers => doc(
            "teams",
            "List a team's members",
            Required,
            None,
            200,
            Page("TeamMember"),
        ),
        Op::AddTeamMember => doc(
            "teams",
            "Add an organization member to a team (org admins)",
            Required,
            None,
            204,
            Empty,
        ),
        Op::RemoveTeamMember => doc(
            "teams",
            "Remove a member from a team (org admins)",
            Required,
            None,
            204,
            Empty,
        ),
        Op::SetTeamPermission => doc(
            "teams",
            "Grant a team a permission on one of the organization's repositories (org admins)",
            Required,
            Some("TeamPermission"),
            204,
            Empty,
        ),
        Op::RevokeTeamPermission => doc(
            "teams",
            "Revoke a team's permission on a repository (org admins)",
            Required,
            None,
            204,
            Empty,
        ),
        Op::ListRepos => doc(
            "repos",
            "List the repositories the caller may see, optionally in one namespace",
            Optional,
            None,
            200,
            Page("Repo"),
        ),
        Op::GetRepo => doc(
            "repos",
            "Show a repository with its tags (readers; 404 to everyone else)",
            Optional,
            None,
            200,
            One("RepoDetail"),
        ),
        Op::UpdateRepo => doc(
            "repos",
            "Change a repository's visibility (repository admins)",
            Required,
            Some("RepoUpdate"),
            200,
            One("Repo"),
        ),
        Op::DeleteRepo => doc(
            "repos",
            "Delete a repository's tags and manifests; blobs are left for garbage collection (repository admins)",
            Required,
            None,
            204,
            Empty,
        ),
        Op::ListRepoPermissions => doc(
            "repos",
            "List a repository's grants (repository admins)",
            Required,
            None,
            200,
            Page("Grant"),
        ),
        Op::GrantRepoPermission => doc(
            "repos",
            "Grant a user or team a permission, replacing an earlier grant (repository admins)",
            Required,
            Some("GrantRequest"),
            204,
            Empty,
        ),
        Op::RevokeUserPermission => doc(
            "repos",
            "Revoke a user's grant (repository admins)",
            Required,
            None,
            204,
            Empty,
        ),
        Op::RevokeTeamGrant => doc(
            "repos",
            "Revoke a team's grant; the team is `org/team` or a team of the repository's organization (repository admins)",
            Required,
            None,
            204,
            Empty,
        ),
        Op::ListBuriedWork => doc(
            "admin",
            "List the work queue's dead letters, optionally of one topic (site admins); `last` is `<topic>/<key>`",
            Required,
            None,
            200,
            Page("BuriedWork"),
        ),
        Op::RequeueWork => doc(
            "admin",
            "Make a dead letter due again with its attempts reset (site admins)",
            Required,
            Some("RequeueRequest"),
            204,
            Empty,
        ),
        Op::GetOpenapi => doc(
            "meta",
            "This OpenAPI document",
            Anyone,
            None,
            200,
            One("OpenApiDocument"),
        ),
    }
}

/// `operationId`: the variant name in lower camel case.
fn operation_id(op: Op) -> String {
    let name = format!("{op:?}");
    let mut chars = name.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_ascii_lowercase().to_string() + chars.as_str()
    })
}

fn param_description(name: &str) -> &'static str {
    match name {
        "repo" => {
            "full repository name, slashes included and not percent-encoded (e.g. `acme/team/app`)"
        }
        "team" => {
            "team name; in repository grant paths `org/team` or a team of the repository's organization"
        }
        "username" => "user name",
        "org" => "organization name",
        "id" => "API key id",
        _ => "path parameter",
    }
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "description": param_description(name),
                "schema": { "type": "string" },
            })
        })
        .collect()
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn operation(op: Op) -> Value {
    let d = describe(op);
    let mut params = path_params(op.path());
    if let Body::Page(_) = d.body {
        if op == Op::ListRepos {
            params.push(json!({
                "name": "namespace", "in": "query", "required": false,
                "description": "only repositories in this namespace",
                "schema": { "type": "string" },
            }));
        }
        if op == Op::ListBuriedWork {
            params.push(json!({
                "name": "topic", "in": "query", "required": false,
                "description": "only dead letters of this topic (e.g. `discard-objects`)",
                "schema": { "type": "string" },
            }));
        }
        params.push(json!({
            "name": "n", "in": "query", "required": false,
            "description": "page size (default and maximum from the registry settings)",
            "schema": { "type": "integer", "minimum": 1 },
        }));
        params.push(json!({
            "name": "last", "in": "query", "required": false,
            "description": "the sort key of the last item of the previous page",
            "schema": { "type": "string" },
        }));
    }
    let ok = match d.body {
        Body::Empty => json!({ "description": "done" }),
        Body::One(s) => json!({
            "description": "success",
            "content": { "application/json": { "schema": schema_ref(s) } },
        }),
        Body::Page(s) => json!({
            "description": "a page of results; `Link: <…>; rel=\"next\"` when more follow",
            "headers": { "Link": { "schema": { "type": "string" } } },
            "content": { "application/json": {
                "schema": { "type": "array", "items": schema_ref(s) }
            } },
        }),
    };
    let mut responses = Map::new();
    responses.insert(d.status.to_string(), ok);
    responses.insert(
        "default".into(),
        json!({ "$ref": "#/components/responses/Error" }),
    );
    let mut o = json!({
        "operationId": operation_id(op),
        "tags": [d.tag],
        "summary": d.summary,
        "parameters": params,
        "responses": responses,
    });
    o["security"] = match d.auth {
        Auth::None => json!([]),
        Auth::Optional => json!([{}, { "bearer": [] }, { "basic": [] }]),
        Auth::Required => json!([{ "bearer": [] }, { "basic": [] }]),
    };
    if let Some(req) = d.request {
        o["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": schema_ref(req) } },
        });
    }
    o
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn time() -> Value {
    json!({ "type": "string", "format": "date-time" })
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": false,
    })
}

fn schemas() -> Value {
    let permission = json!({ "type": "string", "enum": ["read", "write", "admin"] });
    let role = json!({ "type": "string", "enum": ["owner", "admin", "member"] });
    let visibility = json!({ "type": "string", "enum": ["public", "private"] });
    let scope = object(
        &["kind"],
        json!({
            "kind": { "type": "string", "enum": ["all", "namespace", "repository"] },
            "name": { "type": "string", "description": "the namespace or repository; empty for all" },
        }),
    );
    let api_key = json!({
        "id": string(), "name": string(), "scope": scope.clone(),
        "permission": permission.clone(), "expires_at": time(), "revoked_at": time(),
        "created_at": time(),
    });
    let mut created_key = api_key.clone();
    created_key["secret"] = json!({
        "type": "string",
        "description": "`aerugo_ak_…`; shown only once; a Bearer credential or a `docker login` password",
    });
    json!({
        "Error": object(&["error"], json!({
            "error": object(&["code", "message"], json!({
                "code": { "type": "string", "enum": [
                    "not_found", "invalid", "unauthorized", "forbidden", "conflict",
                    "too_many_requests", "unsupported", "method_not_allowed", "too_large",
                    "unavailable", "internal"
                ] },
                "message": string(),
            })),
        })),
        "TokenRequest": object(&["username", "password"], json!({
            "username": string(), "password": string(),
        })),
        "Token": object(&["token", "expires_in"], json!({
            "token": string(), "expires_in": { "type": "integer" },
        })),
        "NewUser": object(&["username", "password", "email"], json!({
            "username": string(),
            "password": { "type": "string", "minLength": 8 },
            "email": string(),
            "is_admin": { "type": "boolean", "default": false },
            "adopt": {
                "type": "boolean", "default": false,
                "description": "site admins: take a name under which repositories already live",
            },
        })),
        "User": object(&["username", "is_admin", "created_at"], json!({
            "username": string(),
            "email": { "type": "string", "description": "only for the user and site admins" },
            "is_admin": { "type": "boolean" },
            "created_at": time(),
        })),
        "UserUpdate": object(&[], json!({
            "email": string(),
            "password": { "type": "string", "minLength": 8 },
            "is_admin": { "type": "boolean" },
        })),
        "PasswordChange": object(&["current_password", "new_password"], json!({
            "current_password": string(),
            "new_password": { "type": "string", "minLength": 8 },
        })),
        "NewOrg": object(&["name"], json!({
            "name": string(),
            "adopt": {
                "type": "boolean", "default": false,
                "description": "site admins: take a name under which repositories already live",
            },
        })),
        "Org": object(&["name", "created_at"], json!({ "name": string(), "created_at": time() })),
        "NewMember": object(&["username", "role"], json!({ "username": string(), "role": role.clone() })),
        "MemberRole": object(&["role"], json!({ "role": role.clone() })),
        "Member": object(&["username", "role"], json!({ "username": string(), "role": role })),
        "NewTeam": object(&["name"], json!({ "name": string() })),
        "Team": object(&["org", "name"], json!({ "org": string(), "name": string() })),
        "TeamMember": object(&["username"], json!({ "username": string() })),
        "TeamPermission": object(&["permission"], json!({ "permission": permission.clone() })),
        "Repo": object(&["name", "visibility", "created_at"], json!({
            "name": string(), "visibility": visibility.clone(), "created_at": time(),
        })),
        "Tag": object(&["name", "digest", "media_type", "size", "updated_at"], json!({
            "name": string(), "digest": string(), "media_type": string(),
            "size": { "type": "integer", "description": "manifest plus referenced blobs, bytes" },
            "updated_at": time(),
        })),
        "RepoDetail": object(&["name", "visibility", "created_at", "updated_at", "tags"], json!({
            "name": string(), "visibility": visibility.clone(), "created_at": time(),
            "updated_at": time(),
            "tags": { "type": "array", "items": schema_ref("Tag") },
        })),
        "RepoUpdate": object(&["visibility"], json!({ "visibility": visibility })),
        "Grant": object(&["permission"], json!({
            "user": string(),
            "team": { "type": "string", "description": "`org/team`" },
            "permission": permission.clone(),
        })),
        "GrantRequest": object(&["permission"], json!({
            "user": { "type": "string", "description": "exactly one of user and team" },
            "team": { "type": "string", "description": "`org/team`, or a team of the repository's organization" },
            "permission": permission.clone(),
        })),
        "NewApiKey": object(&["name", "scope", "permission"], json!({
            "name": string(),
            "scope": scope,
            "permission": permission,
            "expires_in_days": { "type": "integer", "minimum": 0 },
        })),
        "ApiKey": object(&["id", "name", "scope", "permission", "created_at"], api_key),
        "CreatedApiKey": object(
            &["id", "name", "scope", "permission", "created_at", "secret"],
            created_key,
        ),
        "RefreshToken": object(&["id", "service", "client_id", "created_at", "expires_at"], json!({
            "id": string(), "service": string(), "client_id": string(), "created_at": time(),
            "last_used_at": time(), "expires_at": time(),
        })),
        "BuriedWork": object(&["topic", "key", "attempts", "buried_at", "payload"], json!({
            "topic": string(), "key": string(), "attempts": { "type": "integer" },
            "last_error": string(), "buried_at": time(),
            "payload": { "type": "string", "description": "what the consumer was given (JSON text)" },
        })),
        "RequeueRequest": object(&["topic", "key"], json!({ "topic": string(), "key": string() })),
        "OpenApiDocument": { "type": "object" },
    })
}

/// The whole document.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for &op in Op::ALL {
        let entry = paths
            .entry(op.path().to_owned())
            .or_insert_with(|| json!({}));
        entry[op.method().as_str().to_ascii_lowercase()] = operation(op);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Aerugo management API",
            "version": "1",
            "description": "Users, organizations, teams, repositories, permissions and API keys. \
                Errors are `{\"error\": {\"code\", \"message\"}}`. Authenticate with \
                `Authorization: Bearer <token from POST /auth/token or an API key>` or Basic.",
        },
        "servers": [{ "url": PREFIX }],
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "responses": {
                "Error": {
                    "description": "an error",
                    "content": { "application/json": { "schema": schema_ref("Error") } },
                },
            },
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "basic": { "type": "http", "scheme": "basic" },
            },
        },
    })
}

/// `GET /api/v1/openapi.json`: this API's OpenAPI 3.0 document.
pub(super) async fn get_openapi() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The document lists exactly the operations of the table the router is built from, and
    /// every schema it references exists.
    #[test]
    fn document_matches_the_operation_table() {
        let doc = document();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, _) in item.as_object().expect("path item") {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
        let served: BTreeSet<(String, String)> = Op::ALL
            .iter()
            .map(|op| (op.method().to_string(), op.path().to_owned()))
            .collect();
        assert_eq!(documented, served);

        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for (i, _) in text.match_indices("#/components/schemas/") {
            let rest = &text[i + "#/components/schemas/".len()..];
            let name = &rest[..rest.find('"').expect("end of ref")];
            assert!(schemas.contains_key(name), "missing schema {name}");
        }
        let ids: BTreeSet<String> = Op::ALL.iter().map(|&op| operation_id(op)).collect();
        assert_eq!(ids.len(), Op::ALL.len());
        assert_eq!(operation_id(Op::CreateToken), "createToken");
    }
}

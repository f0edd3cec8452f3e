//! The fleet's admin routes: `GET /admin/fleet` (members, target, staleness) and the fleet form of flip and
//! rollback (`"fleet": true`, the default in fleet mode): two-phase across every replica, all or nobody.

use super::admin_state::AdminState;
use super::error::ApiError;
use crate::fleet::Fleet;
use crate::slot::SlotName;
use axum::extract::{Request, State};
use axum::Json;
use serde_json::{json, Map, Value};
use std::time::Instant;

/// The JSON body of a flip or rollback (empty: an empty object).
pub async fn read_body(req: Request) -> Result<Value, ApiError> {
    let body = super::body::read(req, true, true).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_json(format!("invalid request: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_json("the body must be a JSON object"));
    }
    Ok(v)
}

/// Takes `fleet` out of `body`: the fleet when this call is a fleet operation (fleet mode and not
/// `"fleet": false`); a 400 for `"fleet": true` without fleet mode.
pub fn fleet_of(s: &AdminState, body: &mut Value) -> Result<Option<Fleet>, ApiError> {
    let asked = match body.as_object_mut().and_then(|o| o.remove("fleet")) {
        None => None,
        Some(Value::Bool(b)) => Some(b),
        Some(_) => return Err(ApiError::invalid("fleet", "fleet must be true or false")),
    };
    match (&s.fleet, asked) {
        (None, Some(true)) => Err(ApiError::invalid("fleet", "this server is not in fleet mode (--fleet-name)")),
        (Some(f), None | Some(true)) => Ok(Some(f.clone())),
        _ => Ok(None),
    }
}

/// A fleet flip (to `to`, default the standby) or rollback; the other flip settings do not apply to a fleet.
pub async fn flip(fleet: &Fleet, body: Value, rollback: bool) -> Result<Json<Value>, ApiError> {
    let mut to = None;
    for (k, v) in body.as_object().into_iter().flatten() {
        match (k.as_str(), v) {
            ("to", Value::String(name)) if !rollback => {
                to = Some(SlotName::parse(name).ok_or_else(|| ApiError::invalid("to", "to must be blue or green"))?)
            }
            (_, Value::Null) | ("force", Value::Bool(false)) => {}
            ("force", _) => {
                return Err(ApiError::invalid("force", "a fleet flip cannot skip gates: every replica must pass them"))
            }
            _ => return Err(ApiError::invalid("body", format!("{k} does not apply to a fleet operation"))),
        }
    }
    let t0 = Instant::now();
    let out = fleet.flip(to, rollback).await?;
    Ok(Json(json!({"fleet_flip": out, "elapsed_s": t0.elapsed().as_secs_f64()})))
}

/// GET /admin/fleet.
pub async fn view(State(s): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let fleet = s.fleet.as_ref().ok_or_else(|| {
        ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", "this server is not in fleet mode (--fleet-name)")
    })?;
    Ok(Json(json!(fleet.view().await?)))
}

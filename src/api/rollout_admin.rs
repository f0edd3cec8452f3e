//! The rollout routes of the admin API: start (`POST /admin/rollouts`, 202), look (`GET /admin/rollouts/current`
//! or `/{id}`), drive (`POST /admin/rollouts/{id}/pause|resume|promote|abort`) and the promotion report
//! (`GET /admin/rollouts/{id}/report?format=json|markdown|svg`). The rollout module decides everything.

#![deny(clippy::indexing_slicing)]

use super::admin_state::AdminState;
use super::error::ApiError;
use super::JsonBody;
use crate::rollout::views::{DecisionKind, RolloutView};
use crate::rollout::{report, run::Run};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;

fn find(s: &AdminState, id: &str) -> Result<Arc<Run>, ApiError> {
    s.rollouts.get(id).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no rollout {id}")))
}

pub async fn start(
    State(s): State<AdminState>,
    JsonBody(mut body): JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    // In fleet mode a rollout drives every replica's split unless the body says "fleet": false.
    let fleet = super::fleet_admin::fleet_of(&s, &mut body)?;
    if let Some(f) = &s.fleet {
        f.check_rollout(fleet.is_some()).await?;
    }
    let view = s.rollouts.start(body).await?;
    if let Some(f) = fleet {
        f.drive_rollout(&view.id);
    }
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

pub async fn get(State(s): State<AdminState>, Path(id): Path<String>) -> Result<Json<RolloutView>, ApiError> {
    let run = find(&s, &id)?;
    Ok(Json(report::view(&run)))
}

pub async fn command(
    State(s): State<AdminState>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<RolloutView>, ApiError> {
    let kind = match action.as_str() {
        "pause" => DecisionKind::Pause,
        "resume" => DecisionKind::Resume,
        "promote" => DecisionKind::Promote,
        "abort" => DecisionKind::Abort,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no rollout action {other:?}; use pause, resume, promote or abort"),
            ))
        }
    };
    Ok(Json(s.rollouts.command(&id, kind)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    format: Option<String>,
}

/// The promotion report: the rollout's view plus the canary's gate results (JSON), or Markdown, or SVG.
pub async fn report(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let run = find(&s, &id)?;
    let view = report::view(&run);
    match q.format.as_deref().unwrap_or("json") {
        "json" => {
            let status = s.lifecycle.status().await?;
            let slot = crate::slot::SlotName::parse(&view.canary.slot);
            let gates = slot
                .map(|sl| status.slots.get(sl))
                .filter(|v| v.model.as_ref().is_some_and(|m| m.digest == view.canary.digest))
                .and_then(|v| serde_json::to_value(&v.gates).ok());
            Ok(Json(serde_json::json!({"rollout": view, "canary_gates": gates})).into_response())
        }
        "markdown" | "md" => {
            Ok(([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], report::markdown(&view)).into_response())
        }
        "svg" => {
            let svg = report::svg(&view).map_err(ApiError::internal)?;
            Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
        }
        other => Err(ApiError::invalid("format", format!("no report format {other:?}; use json, markdown or svg"))),
    }
}

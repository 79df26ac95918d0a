//! The Agents service: log in and out, presence, and reading lines. In a cluster a request for a
//! line another node serves runs there, and a listing merges every member's lines.

use std::sync::Arc;
use std::time::Duration;

use actors::domain::AgentState;
use actors::events::{LineView, ModelEvent};
use actors::runtime::Model;
use proto::api::agents_client::AgentsClient;
use proto::api::{self, agents_server::Agents};
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use super::convert;
use super::forward::{self, Routing, agents, here_or_owner};
use super::guard::{Guard, Scope};
use super::idempotency::RequestIds;
use super::status::{command_status, invalid, required};
use crate::bridge::LinkPort;
use crate::config::AgentConfig;

/// The Agents service over the model.
pub(crate) struct AgentsService {
    pub(crate) model: Model<LinkPort>,
    pub(crate) request_ids: Arc<RequestIds>,
    pub(crate) guard: Arc<Guard>,
    /// The agent directory, by lower-case email.
    pub(crate) directory: std::collections::HashMap<String, AgentConfig>,
    pub(crate) routing: Routing,
}

type Reply<T> = Result<Response<T>, Status>;

/// How long a command's answer waits for the PBX's event to show in the line, so the caller gets
/// the line as the command left it. The PBX confirms a command before it sends its events.
const SETTLE: Duration = Duration::from_secs(2);

impl AgentsService {
    fn line_now(&self, line: &str) -> Result<api::Line, Status> {
        self.model.line(line).map(convert::line).ok_or_else(|| Status::not_found(format!("no agent line {line}")))
    }

    /// The line once `settled` holds for it (or after [`SETTLE`], as it is then). It wakes on the
    /// line's own change events rather than polling, so the answer leaves as soon as the line shows
    /// the change. Subscribing before the first look means no change can slip between the two.
    async fn line_when(&self, line: &str, settled: impl Fn(&LineView) -> bool) -> Result<api::Line, Status> {
        let mut changes = self.model.publisher().subscribe();
        let settle = async {
            while !self.model.line(line).is_some_and(|view| settled(&view)) {
                loop {
                    match changes.recv().await {
                        Ok(event) if matches!(&event.event, ModelEvent::Line(view) if view.device == line) => break,
                        Ok(_) => {}
                        // Behind: whatever it missed may have been this line's change; look again.
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        };
        let _ = tokio::time::timeout(SETTLE, settle).await;
        self.line_now(line)
    }
}

#[tonic::async_trait]
impl Agents for AgentsService {
    async fn log_in(&self, request: Request<api::LogInRequest>) -> Reply<api::Line> {
        self.guard.admit(&request, Scope::Control)?;
        let request = here_or_owner!(self, request, agents("LogIn"), AgentsClient, log_in);
        let line = required("line", &request.line)?;
        let (agent_id, default_roles) = match (request.agent_id.trim(), request.email.trim()) {
            ("", "") => return Err(invalid("agent_id", "or email is required")),
            ("", email) => match self.directory.get(&email.to_lowercase()) {
                Some(agent) => (agent.id.as_str(), agent.roles.as_slice()),
                None => return Err(Status::not_found(format!("no agent with email {email} in the directory"))),
            },
            (agent_id, _) => (agent_id, &[][..]),
        };
        let roles = if request.roles.is_empty() { default_roles.to_vec() } else { request.roles.clone() };
        if roles.iter().any(|role| role.trim().is_empty() || role.len() > 64) {
            return Err(invalid("roles", "must be non-empty names of at most 64 characters"));
        }
        self.request_ids
            .once("LogIn", &request.request_id, async {
                self.model.log_on(line, agent_id, &roles, request.ready).await.map_err(command_status)?;
                self.line_when(line, |view| view.agent.as_ref().is_some_and(|agent| agent.login_id == agent_id)).await
            })
            .await
            .map(Response::new)
    }

    async fn log_out(&self, request: Request<api::LogOutRequest>) -> Reply<api::Line> {
        self.guard.admit(&request, Scope::Control)?;
        let request = here_or_owner!(self, request, agents("LogOut"), AgentsClient, log_out);
        let line = required("line", &request.line)?;
        self.request_ids
            .once("LogOut", &request.request_id, async {
                self.model.log_off(line).await.map_err(command_status)?;
                self.line_when(line, |view| view.agent.is_none()).await
            })
            .await
            .map(Response::new)
    }

    async fn set_presence(&self, request: Request<api::SetPresenceRequest>) -> Reply<api::Line> {
        self.guard.admit(&request, Scope::Control)?;
        let request = here_or_owner!(self, request, agents("SetPresence"), AgentsClient, set_presence);
        let line = required("line", &request.line)?;
        let presence = api::Presence::try_from(request.presence).unwrap_or(api::Presence::Unspecified);
        let state = match presence {
            api::Presence::Available => AgentState::Ready,
            api::Presence::Away => AgentState::NotReady,
            api::Presence::DoNotDisturb => AgentState::DoNotDisturb,
            api::Presence::AfterCallWork => AgentState::WorkingAfterCall,
            _ => {
                return Err(invalid(
                    "presence",
                    "must be AVAILABLE, AWAY, DO_NOT_DISTURB or AFTER_CALL_WORK (offline is LogOut; busy follows the calls)",
                ));
            }
        };
        self.request_ids
            .once("SetPresence", &request.request_id, async {
                self.model.set_agent_state(line, state, &request.reason).await.map_err(command_status)?;
                self.line_when(line, |view| view.agent.as_ref().is_some_and(|agent| agent.state == state)).await
            })
            .await
            .map(Response::new)
    }

    async fn get_line(&self, request: Request<api::GetLineRequest>) -> Reply<api::Line> {
        self.guard.admit(&request, Scope::Read)?;
        let request = here_or_owner!(self, request, agents("GetLine"), AgentsClient, get_line);
        let line = required("line", &request.line)?;
        self.line_now(line).map(Response::new)
    }

    async fn list_lines(&self, request: Request<api::ListLinesRequest>) -> Reply<api::ListLinesResponse> {
        self.guard.admit(&request, Scope::Read)?;
        let (metadata, _, request) = request.into_parts();
        let page_size = match request.page_size {
            0 => 100,
            size @ 1..=1000 => size as usize,
            _ => return Err(invalid("page_size", "must be at most 1000")),
        };
        let here = self.list_here(&request, page_size);
        if self.routing.is_none() {
            return Ok(Response::new(here));
        }
        // Each member lists its own lines after the token; the page is the first `page_size` of
        // them all. A member that cannot answer fails the listing rather than leave its lines out.
        let there =
            forward::ask_all(&self.routing, agents("ListLines"), &metadata, &request, |channel, request| async move {
                AgentsClient::new(channel).list_lines(request).await
            })
            .await;
        let mut pages = vec![here];
        for (_, answer) in there {
            pages.push(answer?);
        }
        Ok(Response::new(merge_pages(pages, page_size)))
    }
}

impl AgentsService {
    /// This node's page of lines after the request's token.
    fn list_here(&self, request: &api::ListLinesRequest, page_size: usize) -> api::ListLinesResponse {
        let presence = api::Presence::try_from(request.presence).unwrap_or(api::Presence::Unspecified);
        let after = request.page_token.trim();
        let mut lines = self
            .model
            .lines()
            .into_iter()
            .filter(|view| after.is_empty() || view.device.as_str() > after)
            .filter(|view| presence == api::Presence::Unspecified || convert::presence(view.presence) == presence)
            .filter(|view| {
                request.role.is_empty() || view.agent.as_ref().is_some_and(|agent| agent.roles.contains(&request.role))
            });
        let page: Vec<api::Line> = lines.by_ref().take(page_size).map(convert::line).collect();
        let next_page_token = match (lines.next(), page.last()) {
            (Some(_), Some(last)) => last.line.clone(),
            _ => String::new(),
        };
        api::ListLinesResponse { lines: page, next_page_token }
    }
}

/// One page out of several members' pages (each sorted by line, each its member's first lines
/// after the same token): the first `page_size` lines of them all, and a token if any are left.
fn merge_pages(pages: Vec<api::ListLinesResponse>, page_size: usize) -> api::ListLinesResponse {
    let more_behind = pages.iter().any(|page| !page.next_page_token.is_empty());
    let mut lines: Vec<api::Line> = pages.into_iter().flat_map(|page| page.lines).collect();
    lines.sort_by(|a, b| a.line.cmp(&b.line));
    let more = more_behind || lines.len() > page_size;
    lines.truncate(page_size);
    let next_page_token = match lines.last() {
        Some(last) if more => last.line.clone(),
        _ => String::new(),
    };
    api::ListLinesResponse { lines, next_page_token }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(lines: &[&str], more: bool) -> api::ListLinesResponse {
        api::ListLinesResponse {
            lines: lines.iter().map(|line| api::Line { line: (*line).to_owned(), ..api::Line::default() }).collect(),
            next_page_token: if more { lines.last().unwrap().to_string() } else { String::new() },
        }
    }

    fn names(page: &api::ListLinesResponse) -> Vec<&str> {
        page.lines.iter().map(|line| line.line.as_str()).collect()
    }

    #[test]
    fn members_pages_merge_into_one_in_line_order_with_a_token_only_when_lines_are_left() {
        let merged = merge_pages(vec![page(&["2001", "2004"], false), page(&["2002", "2003"], true)], 3);
        assert_eq!((names(&merged), merged.next_page_token.as_str()), (vec!["2001", "2002", "2003"], "2003"));
        let merged = merge_pages(vec![page(&["2001"], false), page(&["2002"], false)], 2);
        assert_eq!((names(&merged), merged.next_page_token.as_str()), (vec!["2001", "2002"], ""));
        let merged = merge_pages(vec![page(&["2001", "2003"], false), page(&["2002"], false)], 2);
        assert_eq!((names(&merged), merged.next_page_token.as_str()), (vec!["2001", "2002"], "2002"));
        let merged = merge_pages(vec![page(&[], false), page(&[], false)], 2);
        assert!(merged.lines.is_empty() && merged.next_page_token.is_empty());
    }
}

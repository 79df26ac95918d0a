//! The Admin service: the Salesforce integration's status and run-time settings, and its dead
//! letters (listed and replayed). Needs the `admin` scope.

use std::sync::Arc;

use actors::crm::engine::{CrmSettings, PopTrigger};
use actors::crm::port::RecordKind;
use actors::crm::task::{TaskTemplates, Template};
use proto::api::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use super::convert;
use super::guard::{Guard, Scope};
use super::status::{invalid, outbox_status, salesforce_off};
use crate::salesforce::Salesforce;

/// The Admin service.
pub(crate) struct AdminService {
    pub(crate) salesforce: Option<Arc<Salesforce>>,
    pub(crate) guard: Arc<Guard>,
}

type Reply<T> = Result<Response<T>, Status>;

impl AdminService {
    fn salesforce(&self) -> Result<&Arc<Salesforce>, Status> {
        self.salesforce.as_ref().ok_or_else(salesforce_off)
    }

    async fn status(&self) -> Reply<api::SalesforceStatus> {
        let (status, dead) = self.salesforce()?.status().await.ok_or_else(salesforce_off)?;
        Ok(Response::new(api::SalesforceStatus {
            settings: Some(settings_to_api(&status.settings)),
            budget_state: status.state.as_str().to_owned(),
            api_usage: status.usage.map_or(0, |usage| usage.used),
            api_limit: status.usage.map_or(0, |usage| usage.max),
            rate: status.rate,
            logs_held: status.logs_held as u64,
            dead_letters: dead,
            requests_in_flight: status.in_flight as u64,
            cached_numbers: status.cached_numbers as u64,
        }))
    }
}

fn trigger_name(trigger: PopTrigger) -> &'static str {
    match trigger {
        PopTrigger::Ringing => "ringing",
        PopTrigger::Answered => "answered",
        PopTrigger::Ended => "ended",
    }
}

fn kind_name(kind: Option<RecordKind>) -> String {
    kind.map_or_else(String::new, |kind| kind.as_str().to_lowercase())
}

fn settings_to_api(settings: &CrmSettings) -> api::SalesforceSettings {
    api::SalesforceSettings {
        enabled: settings.enabled,
        pop_trigger: trigger_name(settings.pop_trigger).to_owned(),
        subject_template: settings.templates.subject.source().to_owned(),
        description_template: settings.templates.description.source().to_owned(),
        auto_create_inbound: kind_name(settings.auto_create.inbound),
        auto_create_outbound: kind_name(settings.auto_create.outbound),
    }
}

/// `settings` with the request's changes, each checked.
fn updated(mut settings: CrmSettings, request: api::UpdateSalesforceSettingsRequest) -> Result<CrmSettings, Status> {
    if let Some(enabled) = request.enabled {
        settings.enabled = enabled;
    }
    if let Some(trigger) = request.pop_trigger {
        settings.pop_trigger = match trigger.as_str() {
            "ringing" => PopTrigger::Ringing,
            "answered" => PopTrigger::Answered,
            "ended" => PopTrigger::Ended,
            _ => return Err(invalid("pop_trigger", "must be ringing, answered or ended")),
        };
    }
    let template = |field: &str, source: &str| {
        Template::parse(source).map_err(|error| invalid(field, &format!("is not a valid template: {error}")))
    };
    if let Some(subject) = request.subject_template {
        settings.templates = TaskTemplates { subject: template("subject_template", &subject)?, ..settings.templates };
    }
    if let Some(description) = request.description_template {
        settings.templates =
            TaskTemplates { description: template("description_template", &description)?, ..settings.templates };
    }
    let kind = |field: &str, value: &str| match value {
        "" => Ok(None),
        "contact" => Ok(Some(RecordKind::Contact)),
        "lead" => Ok(Some(RecordKind::Lead)),
        _ => Err(invalid(field, "must be contact, lead or empty")),
    };
    if let Some(inbound) = request.auto_create_inbound {
        settings.auto_create.inbound = kind("auto_create_inbound", &inbound)?;
    }
    if let Some(outbound) = request.auto_create_outbound {
        settings.auto_create.outbound = kind("auto_create_outbound", &outbound)?;
    }
    Ok(settings)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_salesforce_status(
        &self,
        request: Request<api::GetSalesforceStatusRequest>,
    ) -> Reply<api::SalesforceStatus> {
        self.guard.admit(&request, Scope::Admin)?;
        self.status().await
    }

    async fn update_salesforce_settings(
        &self,
        request: Request<api::UpdateSalesforceSettingsRequest>,
    ) -> Reply<api::SalesforceStatus> {
        self.guard.admit(&request, Scope::Admin)?;
        let salesforce = self.salesforce()?;
        let (status, _) = salesforce.status().await.ok_or_else(salesforce_off)?;
        let settings = updated(status.settings, request.into_inner())?;
        salesforce.set_settings(settings);
        self.status().await
    }

    async fn list_dead_letters(
        &self,
        request: Request<api::ListDeadLettersRequest>,
    ) -> Reply<api::ListDeadLettersResponse> {
        self.guard.admit(&request, Scope::Admin)?;
        let limit = match request.into_inner().limit {
            0 => 100,
            limit @ 1..=1_000 => limit as usize,
            _ => return Err(invalid("limit", "must be at most 1000")),
        };
        let letters = self.salesforce()?.dead_letters(limit).await.map_err(outbox_status)?;
        Ok(Response::new(api::ListDeadLettersResponse {
            dead_letters: letters
                .into_iter()
                .map(|letter| api::DeadLetter {
                    key: letter.key,
                    call_log: letter.record.map(convert::call_log),
                    reason: letter.reason,
                    dead_lettered_at_ms: letter.at,
                })
                .collect(),
        }))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<api::ReplayDeadLettersRequest>,
    ) -> Reply<api::ReplayDeadLettersResponse> {
        self.guard.admit(&request, Scope::Admin)?;
        let keys = request.into_inner().keys;
        let replayed = self.salesforce()?.replay(keys).await.map_err(outbox_status)?;
        Ok(Response::new(api::ReplayDeadLettersResponse { replayed: u32::try_from(replayed).unwrap_or(u32::MAX) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_change_field_by_field_and_bad_values_are_refused() {
        let settings = CrmSettings::default();
        let request = api::UpdateSalesforceSettingsRequest {
            enabled: Some(false),
            subject_template: Some("{status} call".into()),
            auto_create_inbound: Some("lead".into()),
            ..Default::default()
        };
        let changed = updated(settings.clone(), request).unwrap();
        assert!(!changed.enabled);
        assert_eq!(changed.templates.subject.source(), "{status} call");
        assert_eq!(changed.templates.description, settings.templates.description, "untouched");
        assert_eq!(changed.auto_create.inbound, Some(RecordKind::Lead));

        for bad in [
            api::UpdateSalesforceSettingsRequest { subject_template: Some("{who}".into()), ..Default::default() },
            api::UpdateSalesforceSettingsRequest { pop_trigger: Some("soon".into()), ..Default::default() },
            api::UpdateSalesforceSettingsRequest { auto_create_outbound: Some("account".into()), ..Default::default() },
        ] {
            let status = updated(settings.clone(), bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
        }
        let api = settings_to_api(&changed);
        assert_eq!((api.pop_trigger.as_str(), api.auto_create_inbound.as_str()), ("ringing", "lead"));
    }
}

//! The one place that turns the gateway's errors into gRPC statuses, as gRPC defines the codes.

use actors::port::PortError;
use actors::runtime::CommandError;
use tonic::{Code, Status};

use super::forward::RouteError;

/// The status for a command that was not carried out.
pub(crate) fn command_status(error: CommandError) -> Status {
    let message = error.to_string();
    let code = match error {
        CommandError::UnknownLine(_) | CommandError::UnknownCall(_) => Code::NotFound,
        CommandError::Refused(_) => Code::FailedPrecondition,
        CommandError::Invalid(_) => Code::InvalidArgument,
        CommandError::Pbx(PortError::NotFound(_)) => Code::NotFound,
        CommandError::Pbx(PortError::Rejected(_)) => Code::FailedPrecondition,
        CommandError::Pbx(PortError::Invalid(_)) => Code::InvalidArgument,
        CommandError::Pbx(PortError::Unavailable(_)) => Code::Unavailable,
        CommandError::Pbx(PortError::Timeout(_)) => Code::DeadlineExceeded,
    };
    Status::new(code, message)
}

/// The status for a request that could not reach the cluster node serving its line or call. An
/// unknown line or call is NOT_FOUND; everything else clears up on its own (a line mid-handover, a
/// node restarting, etcd briefly out of reach), so it is UNAVAILABLE, which clients retry, or
/// DEADLINE_EXCEEDED when the owner stayed silent until the deadline.
pub(crate) fn route_status(error: RouteError) -> Status {
    let code = match &error {
        RouteError::UnknownLine(_) | RouteError::NoCall(_) => Code::NotFound,
        RouteError::Timeout { .. } => Code::DeadlineExceeded,
        RouteError::Moving(_)
        | RouteError::Moved { .. }
        | RouteError::Lookup { .. }
        | RouteError::Unreachable { .. }
        | RouteError::BadAddress { .. } => Code::Unavailable,
    };
    Status::new(code, error.to_string())
}

/// The status that ends a cluster-wide event stream whose subscriber fell behind.
pub(crate) fn fell_behind() -> Status {
    Status::resource_exhausted("the subscriber fell behind the cluster's events; reconnect")
}

/// Why a member's event stream, relayed into a cluster-wide one, ended without a status.
pub(crate) fn member_stream_ended(node: &str) -> Status {
    Status::unavailable(format!("cluster node {node} ended its event stream"))
}

/// The status for an admin request while the Salesforce integration is not configured.
pub(crate) fn salesforce_off() -> Status {
    Status::failed_precondition("salesforce is not configured on this gateway (salesforce.enabled = false)")
}

/// The status for an outbox that failed (its disk or database).
pub(crate) fn outbox_status(error: actors::crm::port::OutboxError) -> Status {
    Status::internal(error.to_string())
}

/// The status for a request field that is missing or malformed.
pub(crate) fn invalid(field: &str, problem: &str) -> Status {
    Status::invalid_argument(format!("{field} {problem}"))
}

/// Checks a required text field.
pub(crate) fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    let value = value.trim();
    if value.is_empty() { Err(invalid(field, "is required")) } else { Ok(value) }
}

/// Whether a retry of a request that failed this way may be carried out afresh: only when the
/// failure guarantees nothing reached the PBX.
pub(crate) fn retry_may_repeat(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::ResourceExhausted)
}

#[cfg(test)]
mod tests {
    use actors::line::CommandRefusal;

    use super::*;

    #[test]
    fn each_error_gets_the_code_grpc_defines_for_it() {
        let cases = [
            (CommandError::UnknownLine("2001".into()), Code::NotFound),
            (CommandError::UnknownCall("C1".into()), Code::NotFound),
            (CommandError::Refused(CommandRefusal::NotLoggedOn { line: "2001".into() }), Code::FailedPrecondition),
            (CommandError::Invalid("number \"x\"".into()), Code::InvalidArgument),
            (CommandError::Pbx(PortError::NotFound("no call".into())), Code::NotFound),
            (CommandError::Pbx(PortError::Rejected("busy".into())), Code::FailedPrecondition),
            (CommandError::Pbx(PortError::Invalid("bad number".into())), Code::InvalidArgument),
            (CommandError::Pbx(PortError::Unavailable("link down".into())), Code::Unavailable),
            (CommandError::Pbx(PortError::Timeout("slow".into())), Code::DeadlineExceeded),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = command_status(error);
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn routing_failures_are_not_found_only_for_what_does_not_exist() {
        use crate::cluster::EtcdError;
        let cases = [
            (RouteError::UnknownLine("9999".into()), Code::NotFound),
            (RouteError::NoCall("C1".into()), Code::NotFound),
            (RouteError::Moving("2001".into()), Code::Unavailable),
            (RouteError::Moved { line: "2001".into(), by: "node-1".into() }, Code::Unavailable),
            (
                RouteError::Lookup { line: "2001".into(), source: EtcdError::Unreachable("refused".into()) },
                Code::Unavailable,
            ),
            (RouteError::Unreachable { node: "node-2".into(), detail: "refused".into() }, Code::Unavailable),
            (
                RouteError::BadAddress { node: "node-2".into(), advertise: "::".into(), detail: "bad".into() },
                Code::Unavailable,
            ),
            (RouteError::Timeout { node: "node-2".into() }, Code::DeadlineExceeded),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = route_status(error);
            assert_eq!((status.code(), status.message()), (code, message.as_str()));
        }
        let moved = route_status(RouteError::Moved { line: "2001".into(), by: "node-1".into() });
        assert!(moved.message().contains("line 2001 moved") && moved.message().contains("retry"), "{moved:?}");
    }

    #[test]
    fn missing_fields_are_invalid_arguments_that_name_the_field() {
        let status = required("line", "  ").unwrap_err();
        assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "line is required"));
        assert_eq!(required("line", " 2001 ").unwrap(), "2001");
    }
}

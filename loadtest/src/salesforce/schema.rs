//! The sObjects the sandbox knows and their fields: the schema searches, creates and upserts are
//! checked against.

use serde::{Deserialize, Serialize};

use super::ids;

/// A searchable object type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    /// A person at a customer (`003`).
    Contact,
    /// A prospect (`00Q`).
    Lead,
    /// A customer company (`001`).
    Account,
}

impl ObjectKind {
    /// Every searchable object, in the order seeding creates them.
    pub const ALL: [ObjectKind; 3] = [ObjectKind::Account, ObjectKind::Contact, ObjectKind::Lead];

    /// The API name.
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Contact => "Contact",
            ObjectKind::Lead => "Lead",
            ObjectKind::Account => "Account",
        }
    }

    /// The id key prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            ObjectKind::Contact => ids::CONTACT_PREFIX,
            ObjectKind::Lead => ids::LEAD_PREFIX,
            ObjectKind::Account => ids::ACCOUNT_PREFIX,
        }
    }

    /// The object named `name`, ignoring case as Salesforce does.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name().eq_ignore_ascii_case(name))
    }

    /// Every field a search may return.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            ObjectKind::Contact => &[
                "Id",
                "Name",
                "FirstName",
                "LastName",
                "Phone",
                "MobilePhone",
                "AccountId",
                "Description",
                "LeadSource",
            ],
            ObjectKind::Lead => {
                &["Id", "Name", "FirstName", "LastName", "Phone", "MobilePhone", "Company", "Description", "LeadSource"]
            }
            ObjectKind::Account => &["Id", "Name", "Phone"],
        }
    }

    /// The phone fields `IN PHONE FIELDS` searches, whichever fields the query returns.
    pub fn phone_fields(self) -> &'static [&'static str] {
        match self {
            ObjectKind::Contact | ObjectKind::Lead => &["Phone", "MobilePhone"],
            ObjectKind::Account => &["Phone"],
        }
    }

    /// Fields a create may set; `Name` and `Id` are derived.
    pub fn creatable_fields(self) -> &'static [&'static str] {
        match self {
            ObjectKind::Contact => &["FirstName", "LastName", "Phone", "MobilePhone", "Description", "LeadSource"],
            ObjectKind::Lead => {
                &["FirstName", "LastName", "Phone", "MobilePhone", "Company", "Description", "LeadSource"]
            }
            ObjectKind::Account => &["Name", "Phone"],
        }
    }

    /// The canonical spelling of field `name` on this object, ignoring case.
    pub fn field(self, name: &str) -> Option<&'static str> {
        self.fields().iter().copied().find(|field| field.eq_ignore_ascii_case(name))
    }
}

/// The Task fields an upsert accepts, besides the external-id field.
pub const TASK_FIELDS: &[&str] = &[
    "Subject",
    "Description",
    "Status",
    "Priority",
    "TaskSubtype",
    "CallType",
    "CallDurationInSeconds",
    "CallObject",
    "CallDisposition",
    "WhoId",
    "WhatId",
    "OwnerId",
    "ActivityDate",
];

/// Text fields' maximum lengths in characters; `STRING_TOO_LONG` beyond.
pub const TASK_MAX_LENGTHS: &[(&str, usize)] = &[
    ("Subject", 255),
    ("Description", 32_000),
    ("CallObject", 255),
    ("CallDisposition", 255),
    ("Status", 255),
    ("Priority", 255),
];

/// The one value of the restricted picklist `TaskSubtype` a call log may use.
pub const TASK_SUBTYPES: &[&str] = &["Call"];

/// The values of the restricted picklist `CallType`.
pub const CALL_TYPES: &[&str] = &["Inbound", "Outbound", "Internal"];

//! The seeded org: Accounts, Contacts and Leads with phone numbers from a number plan, written in
//! mixed human formats, some deliberately shared, so searches find one, several or no records.
//! Everything follows from the seed: the same configuration gives the same records and ids.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use super::ids;
use super::phone::{NumberPlan, PhoneStyle};
use super::schema::ObjectKind;

/// What to seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedConfig {
    /// Seeds the random choices.
    pub seed: u64,
    /// Contacts to create.
    pub contacts: usize,
    /// Leads to create.
    pub leads: usize,
    /// Accounts to create.
    pub accounts: usize,
    /// Where phone numbers come from.
    pub number_plan: NumberPlan,
}

impl Default for SeedConfig {
    fn default() -> Self {
        Self { seed: 1, contacts: 1_000, leads: 300, accounts: 200, number_plan: NumberPlan::default() }
    }
}

/// A Contact, Lead or Account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The 18-character id.
    pub id: String,
    /// The object type.
    pub object: ObjectKind,
    /// Field values by canonical name (`Name` included, `Id` not); absent fields are null.
    pub fields: BTreeMap<String, String>,
}

impl Record {
    /// The value of `field` (canonical spelling), `Id` included.
    pub fn get(&self, field: &str) -> Option<&str> {
        if field == "Id" { Some(&self.id) } else { self.fields.get(field).map(String::as_str) }
    }
}

/// The seeded records and, for tests, which number finds which records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seeded {
    /// The number plan the numbers came from.
    pub number_plan: NumberPlan,
    /// Accounts, each with a main line.
    pub accounts: Vec<Record>,
    /// Contacts, each at an Account; some share its main line, a few are duplicates.
    pub contacts: Vec<Record>,
    /// Leads.
    pub leads: Vec<Record>,
    /// Every seeded number in E.164, with the ids of the records a search for it finds.
    pub numbers: BTreeMap<String, Vec<String>>,
}

impl Seeded {
    /// Every seeded record: Accounts, Contacts, then Leads.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.accounts.iter().chain(&self.contacts).chain(&self.leads)
    }

    /// The ids a search for the seeded `e164` number finds (empty for an unseeded number).
    pub fn matches(&self, e164: &str) -> &[String] {
        self.numbers.get(e164).map_or(&[], Vec::as_slice)
    }

    /// Seeded numbers (E.164) that exactly `count` records match, in order.
    pub fn numbers_with_matches(&self, count: usize) -> Vec<&str> {
        self.numbers.iter().filter(|(_, ids)| ids.len() == count).map(|(number, _)| number.as_str()).collect()
    }

    /// Up to `count` numbers of the plan that match no seeded record (E.164), in order.
    pub fn unmatched_numbers(&self, count: usize) -> Vec<String> {
        let plan = &self.number_plan;
        (plan.first_index..plan.end_index.max(plan.first_index + 1) + count as u64)
            .map(|index| plan.e164(index))
            .filter(|number| !self.numbers.contains_key(number))
            .take(count)
            .collect()
    }
}

const FIRST_NAMES: &[&str] = &[
    "Anna", "Ben", "Clara", "David", "Elif", "Felix", "Greta", "Hannes", "Ines", "Jonas", "Katrin", "Lukas", "Mia",
    "Noah", "Olga", "Paul", "Rosa", "Stefan", "Tanja", "Yusuf",
];
const LAST_NAMES: &[&str] = &[
    "Bauer",
    "Becker",
    "Fischer",
    "Hoffmann",
    "Koch",
    "Krause",
    "Lange",
    "Meyer",
    "Müller",
    "Neumann",
    "Richter",
    "Schmidt",
    "Schneider",
    "Schulz",
    "Wagner",
    "Weber",
    "Wolf",
    "Yilmaz",
    "Zimmermann",
    "Kowalski",
];
const COMPANY_SUFFIXES: &[&str] = &["GmbH", "AG", "KG", "& Söhne", "Logistik", "Bau", "Consulting", "Medien"];
const LEAD_SOURCES: &[&str] = &["Phone Inquiry", "Web", "Partner Referral", "Trade Show"];

struct Seeder {
    rng: SmallRng,
    plan: NumberPlan,
    numbers: BTreeMap<String, Vec<String>>,
    serial: u64,
}

impl Seeder {
    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[self.rng.random_range(0..list.len())]
    }

    fn fresh_index(&mut self) -> u64 {
        let end = self.plan.end_index.max(self.plan.first_index + 1);
        self.rng.random_range(self.plan.first_index..end)
    }

    fn style(&mut self) -> PhoneStyle {
        PhoneStyle::ALL[self.rng.random_range(0..PhoneStyle::ALL.len())]
    }

    /// Writes number `index` into `field` of `record` in a random style, and notes the match.
    fn phone(&mut self, record: &mut Record, field: &str, index: u64) {
        let style = self.style();
        record.fields.insert(field.to_owned(), self.plan.format(index, style));
        let ids = self.numbers.entry(self.plan.e164(index)).or_default();
        if !ids.contains(&record.id) {
            ids.push(record.id.clone());
        }
    }

    fn record(&mut self, object: ObjectKind) -> Record {
        self.serial += 1;
        Record { id: ids::record_id(object.prefix(), self.serial), object, fields: BTreeMap::new() }
    }

    fn person(&mut self, object: ObjectKind) -> Record {
        let mut record = self.record(object);
        let (first, last) = (self.pick(FIRST_NAMES), self.pick(LAST_NAMES));
        record.fields.insert("FirstName".into(), first.into());
        record.fields.insert("LastName".into(), last.into());
        record.fields.insert("Name".into(), format!("{first} {last}"));
        let source = self.pick(LEAD_SOURCES);
        record.fields.insert("LeadSource".into(), source.into());
        record
    }
}

/// Seeds an org; returns the records and the next free id serial.
pub fn seed(config: &SeedConfig) -> (Seeded, u64) {
    let mut seeder = Seeder {
        rng: SmallRng::seed_from_u64(config.seed),
        plan: config.number_plan.clone(),
        numbers: BTreeMap::new(),
        serial: 0,
    };
    let mut main_lines = Vec::with_capacity(config.accounts);
    let mut accounts = Vec::with_capacity(config.accounts);
    for _ in 0..config.accounts {
        let mut account = seeder.record(ObjectKind::Account);
        let name = format!("{} {}", seeder.pick(LAST_NAMES), seeder.pick(COMPANY_SUFFIXES));
        account.fields.insert("Name".into(), name);
        let line = seeder.fresh_index();
        seeder.phone(&mut account, "Phone", line);
        main_lines.push(line);
        accounts.push(account);
    }
    let mut contacts: Vec<Record> = Vec::with_capacity(config.contacts);
    let mut contact_lines: Vec<u64> = Vec::with_capacity(config.contacts);
    for i in 0..config.contacts {
        // Every 25th Contact (after the first few) is a duplicate of an earlier one: same person, same
        // number, another record, as real orgs have.
        if i >= 5 && i % 25 == 0 {
            let original = seeder.rng.random_range(0..contacts.len());
            let mut duplicate = seeder.record(ObjectKind::Contact);
            duplicate.fields = contacts[original].fields.clone();
            duplicate.fields.remove("MobilePhone");
            let line = contact_lines[original];
            seeder.phone(&mut duplicate, "Phone", line);
            contacts.push(duplicate);
            contact_lines.push(line);
            continue;
        }
        let mut contact = seeder.person(ObjectKind::Contact);
        // Every tenth Contact is reached through its Account's main line.
        let line =
            if i % 10 == 3 && !accounts.is_empty() { main_lines[i % accounts.len()] } else { seeder.fresh_index() };
        if let Some(account) = accounts.get(i % accounts.len().max(1)) {
            contact.fields.insert("AccountId".into(), account.id.clone());
        }
        seeder.phone(&mut contact, "Phone", line);
        if seeder.rng.random_range(0..2) == 0 {
            let mobile = seeder.fresh_index();
            seeder.phone(&mut contact, "MobilePhone", mobile);
        }
        contacts.push(contact);
        contact_lines.push(line);
    }
    let mut leads = Vec::with_capacity(config.leads);
    for _ in 0..config.leads {
        let mut lead = seeder.person(ObjectKind::Lead);
        let company = format!("{} {}", seeder.pick(LAST_NAMES), seeder.pick(COMPANY_SUFFIXES));
        lead.fields.insert("Company".into(), company);
        let line = seeder.fresh_index();
        seeder.phone(&mut lead, "Phone", line);
        if seeder.rng.random_range(0..3) == 0 {
            let mobile = seeder.fresh_index();
            seeder.phone(&mut lead, "MobilePhone", mobile);
        }
        leads.push(lead);
    }
    let seeded = Seeded { number_plan: config.number_plan.clone(), accounts, contacts, leads, numbers: seeder.numbers };
    (seeded, seeder.serial + 1)
}

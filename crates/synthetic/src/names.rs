//! Invented pupil names, drawn from forenames and surnames that are common in England.
//!
//! The lists mix names of English, Welsh, Scottish, Irish, South Asian, African, Caribbean,
//! East Asian and European origin. Every name is equally likely, so frequencies do not match
//! any census. Two surnames contain an apostrophe and one a hyphen, so that consumers of the
//! files meet them.

use rand::Rng;
use rand::seq::IndexedRandom;

#[rustfmt::skip]
const GIRLS_FORENAMES: &[&str] = &[
    "Olivia", "Amelia", "Isla", "Ava", "Mia", "Ivy", "Lily", "Isabella", "Rosie", "Sophia", "Grace",
    "Freya", "Willow", "Florence", "Emily", "Ella", "Poppy", "Evie", "Elsie", "Charlotte", "Evelyn",
    "Sienna", "Sofia", "Daisy", "Phoebe", "Jessica", "Ruby", "Matilda", "Alice", "Harper", "Maya",
    "Aria", "Zara", "Layla", "Aisha", "Fatima", "Maryam", "Amira", "Hannah", "Chloe", "Holly",
    "Erin", "Scarlett", "Millie", "Lucy", "Eliza", "Esme", "Ellie", "Jasmine", "Priya", "Anaya",
    "Zuzanna", "Julia", "Nia", "Imani", "Eva", "Maisie", "Harriet", "Amara", "Mei", "Niamh",
    "Keira", "Sara", "Hafsa", "Simran", "Chiamaka", "Leah", "Bethany",
];

#[rustfmt::skip]
const BOYS_FORENAMES: &[&str] = &[
    "Oliver", "George", "Harry", "Noah", "Jack", "Leo", "Arthur", "Muhammad", "Oscar", "Charlie",
    "Jacob", "Thomas", "Henry", "William", "Alfie", "Theo", "Freddie", "Archie", "Joshua", "Isaac",
    "James", "Lucas", "Ethan", "Alexander", "Max", "Samuel", "Mohammed", "Daniel", "Logan",
    "Joseph", "Edward", "Reuben", "Finley", "Dylan", "Adam", "Elijah", "Sebastian", "Teddy",
    "Harrison", "Louie", "Ryan", "Zachary", "Ibrahim", "Yusuf", "Ayaan", "Arjun", "Kai", "Rory",
    "Tyler", "Riley", "Jayden", "Kacper", "Jakub", "Luca", "Mason", "Toby", "Nathan", "Aarav",
    "Rohan", "Hamza", "Ali", "Tobias", "Felix", "Emmanuel", "David", "Kofi", "Callum", "Owen",
    "Jian", "Mateo",
];

#[rustfmt::skip]
const SURNAMES: &[&str] = &[
    "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas",
    "Johnson", "Roberts", "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards", "Hughes",
    "Green", "Hall", "Lewis", "Harris", "Clarke", "Patel", "Jackson", "Wood", "Turner", "Martin",
    "Cooper", "Hill", "Ward", "Morris", "Moore", "Clark", "Lee", "King", "Baker", "Harrison",
    "Morgan", "Allen", "James", "Scott", "Phillips", "Watson", "Davis", "Parker", "Price",
    "Bennett", "Young", "Griffiths", "Mitchell", "Kelly", "Cook", "Carter", "Richardson", "Bailey",
    "Collins", "Bell", "Shaw", "Murphy", "Miller", "Cox", "Richards", "Khan", "Marshall",
    "Anderson", "Simpson", "Ellis", "Adams", "Singh", "Begum", "Wilkinson", "Foster", "Chapman",
    "Powell", "Webb", "Rogers", "Gray", "Mason", "Ali", "Hunt", "Hussain", "Campbell", "Matthews",
    "Owen", "Palmer", "Holmes", "Mills", "Barnes", "Knight", "Lloyd", "Butler", "Russell", "Barker",
    "Fisher", "Stevens", "Jenkins", "Murray", "Dixon", "Harvey", "Ahmed", "Shah", "Sharma", "Kaur",
    "Nowak", "Okafor", "Mensah", "Adeyemi", "Osei", "Nguyen", "Chen", "Wong", "Rossi", "Silva",
    "Costa", "Santos", "O'Brien", "O'Connor", "Byrne", "Campbell-Reid", "Gordon", "Reid", "Francis",
    "Grant", "Iqbal", "Mahmood", "Popescu",
];

/// Sex as recorded in the CTF `Sex` element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sex {
    Female,
    Male,
}

impl Sex {
    pub(crate) fn random(rng: &mut impl Rng) -> Self {
        if rng.random_bool(0.5) {
            Sex::Female
        } else {
            Sex::Male
        }
    }

    pub(crate) fn ctf_code(self) -> &'static str {
        match self {
            Sex::Female => "F",
            Sex::Male => "M",
        }
    }
}

/// Draws a forename suited to `sex`.
pub(crate) fn forename(rng: &mut impl Rng, sex: Sex) -> &'static str {
    let list = match sex {
        Sex::Female => GIRLS_FORENAMES,
        Sex::Male => BOYS_FORENAMES,
    };
    list.choose(rng).expect("forename lists are not empty")
}

pub(crate) fn surname(rng: &mut impl Rng) -> &'static str {
    SURNAMES.choose(rng).expect("the surname list is not empty")
}

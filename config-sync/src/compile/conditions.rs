//! Status conditions: their types and reasons (the Gateway API's names, as enums so a typo is a
//! compile error), and how one is made.

use super::*;

/// A condition type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    Accepted,
    Programmed,
    ResolvedRefs,
    Conflicted,
    SupportedVersion,
    InsecureFrontendValidationMode,
}

/// A condition reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    // Positive: the reason named after its condition.
    Accepted,
    Programmed,
    ResolvedRefs,
    SupportedVersion,
    NoConflicts,
    // GatewayClass, Gateway and listener problems.
    InvalidParameters,
    UnsupportedAddress,
    AddressNotUsable,
    ListenersNotValid,
    UnsupportedProtocol,
    InvalidRouteKinds,
    HostnameConflict,
    ProtocolConflict,
    InvalidCertificateRef,
    InvalidCACertificateRef,
    InvalidCACertificateKind,
    NoValidCACertificate,
    ConfigurationChanged,
    Pending,
    Invalid,
    // Route problems.
    NoMatchingParent,
    NotAllowedByListeners,
    NoMatchingListenerHostname,
    UnsupportedValue,
    InvalidKind,
    RefNotPermitted,
    BackendNotFound,
    /// An `ExtensionRef` filter names an object that does not exist (Sluice's reason: the
    /// spec defines none for filters).
    FilterNotFound,
}

impl Type {
    /// The spec's name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Type::Accepted => "Accepted",
            Type::Programmed => "Programmed",
            Type::ResolvedRefs => "ResolvedRefs",
            Type::Conflicted => "Conflicted",
            Type::SupportedVersion => "SupportedVersion",
            Type::InsecureFrontendValidationMode => "InsecureFrontendValidationMode",
        }
    }
}

impl Reason {
    /// The spec's name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "Accepted",
            Reason::Programmed => "Programmed",
            Reason::ResolvedRefs => "ResolvedRefs",
            Reason::SupportedVersion => "SupportedVersion",
            Reason::NoConflicts => "NoConflicts",
            Reason::InvalidParameters => "InvalidParameters",
            Reason::UnsupportedAddress => "UnsupportedAddress",
            Reason::AddressNotUsable => "AddressNotUsable",
            Reason::ListenersNotValid => "ListenersNotValid",
            Reason::UnsupportedProtocol => "UnsupportedProtocol",
            Reason::InvalidRouteKinds => "InvalidRouteKinds",
            Reason::HostnameConflict => "HostnameConflict",
            Reason::ProtocolConflict => "ProtocolConflict",
            Reason::InvalidCertificateRef => "InvalidCertificateRef",
            Reason::InvalidCACertificateRef => "InvalidCACertificateRef",
            Reason::InvalidCACertificateKind => "InvalidCACertificateKind",
            Reason::NoValidCACertificate => "NoValidCACertificate",
            Reason::ConfigurationChanged => "ConfigurationChanged",
            Reason::Pending => "Pending",
            Reason::Invalid => "Invalid",
            Reason::NoMatchingParent => "NoMatchingParent",
            Reason::NotAllowedByListeners => "NotAllowedByListeners",
            Reason::NoMatchingListenerHostname => "NoMatchingListenerHostname",
            Reason::UnsupportedValue => "UnsupportedValue",
            Reason::InvalidKind => "InvalidKind",
            Reason::RefNotPermitted => "RefNotPermitted",
            Reason::BackendNotFound => "BackendNotFound",
            Reason::FilterNotFound => "FilterNotFound",
        }
    }
}

/// Why something failed: the reason and a message for people.
pub(super) type Why = (Reason, String);

/// `Programmed`: True, or False with reason `Invalid`.
pub(super) fn programmed_condition(ok: bool, what: &str, generation: Option<i64>) -> Condition {
    if ok {
        let message = format!("{what} programmed");
        condition(Type::Programmed, true, Reason::Programmed, &message, generation)
    } else {
        let message = format!("{what} has nothing usable");
        condition(Type::Programmed, false, Reason::Invalid, &message, generation)
    }
}

/// A condition with a placeholder time; the status writer carries real times over.
pub(crate) fn condition(
    type_: Type,
    status: bool,
    reason: Reason,
    message: &str,
    observed_generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.as_str().to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.as_str().to_owned(),
        message: message.to_owned(),
        observed_generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

"""Vulnerability scanners' JSON reports, read into one shape.

Trivy (``trivy image --format json``, report schema version 2) is the standard; Grype
(``grype -o json``) is the second most common. Either is read into a `ScanReport`: every
finding with its ID, severity, package and fixed version, and the image ID the scanner saw,
so a report about another image than the one admitted is caught. Severities are Trivy's
words; Grype's ``Negligible`` ranks below LOW.

Pure: standard library only.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass

#: lowest first
SEVERITIES = ("UNKNOWN", "NEGLIGIBLE", "LOW", "MEDIUM", "HIGH", "CRITICAL")


class ReportError(ValueError):
    """The scanner's output is not a report this module can read; the message says why."""


@dataclass(frozen=True)
class Finding:
    id: str  # CVE-2024-…, GHSA-…
    severity: str  # one of SEVERITIES
    package: str
    version: str
    fixed: str = ""  # the version that fixes it, "" when none is known

    def describe(self) -> str:
        fix = f", fixed in {self.fixed}" if self.fixed else ", no fix yet"
        return f"{self.id} ({self.severity}, {self.package} {self.version}{fix})"


@dataclass(frozen=True)
class ScanReport:
    scanner: str  # "trivy", "grype 0.74.0"
    image_id: str  # what the scanner says it scanned; "" when the report does not say
    findings: tuple[Finding, ...]

    def counts(self) -> dict[str, int]:
        found = Counter(f.severity for f in self.findings)
        return {s: found[s] for s in reversed(SEVERITIES) if found[s]}

    def at_or_above(self, severity: str, ignored: frozenset[str] = frozenset()) -> tuple[Finding, ...]:
        """The findings that refuse an image: at least ``severity``, not ignored by ID,
        the worst first."""
        floor = rank(severity)
        found = [f for f in self.findings if rank(f.severity) >= floor and f.id not in ignored]
        return tuple(sorted(found, key=lambda f: (-rank(f.severity), f.id, f.package)))

    def to_json(self) -> dict:
        return {"scanner": self.scanner, "image_id": self.image_id,
                "findings": [asdict(f) for f in self.findings]}

    @classmethod
    def from_json(cls, data: dict) -> ScanReport:
        return cls(data["scanner"], data["image_id"], tuple(Finding(**f) for f in data["findings"]))


def rank(severity: str) -> int:
    return SEVERITIES.index(normal_severity(severity))


def normal_severity(severity: str) -> str:
    word = (severity or "UNKNOWN").upper()
    return word if word in SEVERITIES else "UNKNOWN"


def _trivy(report: dict) -> ScanReport:
    findings = []
    for result in report.get("Results") or []:
        for vulnerability in result.get("Vulnerabilities") or []:
            findings.append(Finding(
                id=vulnerability["VulnerabilityID"],
                severity=normal_severity(vulnerability.get("Severity", "")),
                package=vulnerability.get("PkgName", ""),
                version=vulnerability.get("InstalledVersion", ""),
                fixed=vulnerability.get("FixedVersion", "") or "",
            ))
    metadata = report.get("Metadata") or {}
    return ScanReport("trivy", metadata.get("ImageID", "") or "", _unique(findings))


def _grype(report: dict) -> ScanReport:
    findings = []
    for match in report.get("matches") or []:
        vulnerability, artifact = match["vulnerability"], match.get("artifact") or {}
        fixed = (vulnerability.get("fix") or {}).get("versions") or []
        findings.append(Finding(
            id=vulnerability["id"],
            severity=normal_severity(vulnerability.get("severity", "")),
            package=artifact.get("name", ""),
            version=artifact.get("version", ""),
            fixed=", ".join(fixed),
        ))
    target = (report.get("source") or {}).get("target") or {}
    descriptor = report.get("descriptor") or {}
    name = " ".join(filter(None, (descriptor.get("name", "grype"), descriptor.get("version", ""))))
    return ScanReport(name, target.get("imageID", "") if isinstance(target, dict) else "", _unique(findings))


def _unique(findings: list[Finding]) -> tuple[Finding, ...]:
    """One finding per (ID, package, version): scanners repeat a finding per target."""
    return tuple(dict.fromkeys(findings))


def parse_report(text: str) -> ScanReport:
    """A Trivy or Grype JSON report, told apart by their own top-level keys."""
    try:
        report = json.loads(text)
    except ValueError as e:
        raise ReportError(f"the scanner printed no JSON ({e}); it must print its JSON report on stdout") from None
    if not isinstance(report, dict):
        raise ReportError("the scanner's JSON is not a report object")
    try:
        if "SchemaVersion" in report or "Results" in report:
            return _trivy(report)
        if "matches" in report:
            return _grype(report)
    except (KeyError, TypeError, AttributeError) as e:
        raise ReportError(f"the scanner's report lacks a field every report carries: {e}") from None
    raise ReportError("the scanner's JSON is neither a Trivy report (SchemaVersion, Results) "
                      "nor a Grype report (matches)")

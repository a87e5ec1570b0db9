"""The settings of image admission (`docker.admission`): which facts about an image must hold
before a server is created from it. A mixin of `HardenedSpawner`; config is
``c.HardenedSpawner.<name>``.

Docker-only: the facts are read from the engine's image export. On Kubernetes the images
are the cluster's, and admission there belongs to an admission controller.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

from traitlets import Bool, HasTraits, Integer, List, TraitError, Unicode, validate

from ..admission.reports import SEVERITIES
from ..admission.rules import AdmissionRules
from .admission import AdmissionSettings

_PLACEHOLDERS = ("{image}", "{image_id}")


class ImageAdmissionSettings(HasTraits):
    """Image admission's settings (module docstring)."""

    if TYPE_CHECKING:  # DockerSpawner's traits read below
        image: str
        allowed_images: Any
        log: Any

    image_admission = Bool(
        True,
        help="""Admit each image before a server is created from it: its setuid/setgid and
        file-capability files, whether it can run jupyterhub-singleuser as any UID, whether
        its name still means the approved image (`image_pinning`) and the scanner's report
        (`image_scanner`). The facts are read once per image ID, at hub start for
        `image` and every `allowed_images` entry. False: images are taken on trust, as
        DockerSpawner does.""",
    ).tag(config=True)

    image_pinning = Bool(
        True,
        help="""A tag means the image it meant when it was approved. The first time the hub
        sees a name (at its start, for `image` and `allowed_images`) it records the image ID
        the name points at; later, a tag that points elsewhere (rebuilt, re-pulled, retagged)
        is refused until an admin runs `hardened-spawner images approve NAME`, which records
        who approved which ID in place of which. On by default: on a shared server what
        students run must be what the admin checked, and a tag such as `:latest` can mean
        other bytes tomorrow. Names with a digest (`name@sha256:...`) are pinned by the
        engine itself.""",
    ).tag(config=True)

    image_allowed_special_files = List(
        Unicode(),
        help="""Absolute paths of setuid, setgid or file-capability files an admin accepts in
        the images. Every other such file refuses the image: the server runs with
        no-new-privileges, which stops them, but a file that needs them is broken, and one
        that hands out root should not ship to every user.""",
    ).tag(config=True)

    image_scanner = List(
        Unicode(),
        help="""A vulnerability scanner command that prints a JSON report on stdout, as a list;
        `{image}` expands to the image's name and `{image_id}` to its ID. Trivy:
        `["trivy", "image", "--quiet", "--format", "json", "{image_id}"]`; Grype:
        `["grype", "-o", "json", "{image_id}"]`. Reports are kept by image ID with their date.
        Empty (default): no scan.""",
    ).tag(config=True)

    image_scan_severity = Unicode(
        "CRITICAL",
        help=f"""Refuse images with findings at this severity or above ({', '.join(SEVERITIES)}).
        CRITICAL by default: a Debian or Ubuntu base always carries HIGH findings without a
        fix, and refusing them would refuse every image.""",
    ).tag(config=True)

    image_scan_ignore = List(
        Unicode(),
        help="""Finding IDs (CVE-..., GHSA-...) an admin has weighed and accepts: they do not
        refuse an image.""",
    ).tag(config=True)

    image_scan_max_age = Integer(
        86400,
        help="""Seconds a scanner report is used for; an older one is made again at the next
        hub start, approval or spawn (vulnerability databases change daily).""",
    ).tag(config=True)

    image_scan_timeout = Integer(
        600, help="Seconds a scan may take before it counts as failed (and refuses the image).",
    ).tag(config=True)

    @validate("image_allowed_special_files")
    def _validate_special_files(self, proposal):
        for path in proposal.value:
            if not path.startswith("/"):
                raise TraitError(f"HardenedSpawner.image_allowed_special_files: {path!r} is not an "
                                 "absolute path (name the file as the container sees it, e.g. /usr/bin/ping).")
        return proposal.value

    @validate("image_scanner")
    def _validate_scanner(self, proposal):
        command = proposal.value
        if not command:
            return command
        if not any(p in part for part in command for p in _PLACEHOLDERS):
            raise TraitError("HardenedSpawner.image_scanner must name the image to scan with "
                             "{image_id} (or {image}), e.g. ['trivy', 'image', '--format', 'json', '{image_id}'].")
        if shutil.which(command[0]) is None:
            raise TraitError(f"HardenedSpawner.image_scanner: {command[0]!r} is not an executable on "
                             "the hub's PATH. Install the scanner, or give its absolute path.")
        return command

    @validate("image_scan_severity")
    def _validate_severity(self, proposal):
        word = proposal.value.upper()
        if word not in SEVERITIES:
            raise TraitError(f"HardenedSpawner.image_scan_severity must be one of {', '.join(SEVERITIES)}, "
                             f"not {proposal.value!r}.")
        return word

    @validate("image_scan_max_age", "image_scan_timeout")
    def _validate_scan_seconds(self, proposal):
        if proposal.value <= 0:
            raise TraitError(f"HardenedSpawner.{proposal.trait.name} must be a positive number of seconds.")
        return proposal.value

    def admission_settings(self) -> AdmissionSettings:
        return AdmissionSettings(
            rules=AdmissionRules(
                pinning=self.image_pinning,
                allowed_special_files=frozenset(self.image_allowed_special_files),
                scanning=bool(self.image_scanner),
                refuse_severity=self.image_scan_severity,
                ignored_findings=frozenset(self.image_scan_ignore),
            ),
            scanner=tuple(self.image_scanner),
            scan_timeout=self.image_scan_timeout,
            scan_max_age=self.image_scan_max_age,
        )

    def admitted_images(self) -> list[str]:
        """`image` and every `allowed_images` entry (a callable's are known only per user)."""
        names = [self.image]
        if isinstance(self.allowed_images, dict):
            names += [n for n in self.allowed_images.values() if isinstance(n, str)]
        return list(dict.fromkeys(names))

"""Every error the control plane raises on purpose.

The whole tree, so callers (the CLI, the API's error middleware) can pick the right
clause and say what happens next:

    EdgeFleetError                    (shared.errors)
    └── ControlPlaneError
        ├── DatabaseError             the database failed or cannot be reached; retry later
        │   └── SchemaOutOfDate       not at the newest migration; run `edgefleet cp migrate`
        ├── TokenError
        │   ├── UnknownToken          no operator token has that id; permanent
        │   └── InvalidRole           not one of viewer, operator, admin; permanent
        ├── ModelError
        │   ├── InvalidBundle         the bundle failed verification; permanent
        │   ├── BundleTooLarge        over the upload size cap; permanent
        │   ├── VersionConflict       name+version exist with another digest; permanent
        │   ├── UnknownModel          no such model version or bundle
        │   └── KeysNotConfigured     no key directory; start with --keys
        ├── DeviceError
        │   ├── InvalidCsr            a CSR unreadable, badly signed, of a refused key type, or
        │   │                         naming another device; permanent
        │   ├── EnrollmentRefused     the enrollment token is unknown, expired or used; get a
        │   │                         new token
        │   ├── DeviceExists          the device id is enrolled and not revoked; revoke it first
        │   └── UnknownDevice         no device has that id
        ├── CertificateAuthorityError the CA's files are unreadable or mismatched; restore them
        ├── AssignmentError           (control_plane.assignments) assignments are disabled or
        │                             the assignment key is unusable
        ├── RolloutError              (control_plane.rollouts) unknown rollout, or a conflict
        │                             with its state or another rollout; InvalidRollout
        │                             (rollout_plan) for a malformed request
        ├── ApiError                  (control_plane.api.errors) a request the API refuses
        └── DemoError                 (control_plane.demo_processes) `edgefleet demo` cannot
                                      run: a port is taken, a child did not start

Errors that belong to one module are defined there and listed here, so the tree stays whole.
SQLAlchemy and Alembic exceptions are translated into `DatabaseError` in `control_plane.db`
and never travel further.
"""

from __future__ import annotations

from shared.errors import EdgeFleetError


class ControlPlaneError(EdgeFleetError):
    """Base class of every error the control plane raises on purpose."""


class DatabaseError(ControlPlaneError):
    """The database failed or could not be reached; retrying later may help."""


class SchemaOutOfDate(DatabaseError):
    """The database is not at the newest migration; run `edgefleet cp migrate`."""


class TokenError(ControlPlaneError):
    """An operator-token operation was refused."""


class UnknownToken(TokenError):
    """No operator token has the given id."""


class InvalidRole(TokenError):
    """A role name is not one of viewer, operator, admin."""


class ModelError(ControlPlaneError):
    """A models-registry operation was refused."""


class InvalidBundle(ModelError):
    """An uploaded bundle failed verification (signature, key list, contents); permanent."""


class BundleTooLarge(ModelError):
    """An uploaded bundle is over the size cap; permanent for this bundle."""


class VersionConflict(ModelError):
    """That model name and version already exist with a different bundle; permanent."""


class UnknownModel(ModelError):
    """No such model version or bundle."""


class KeysNotConfigured(ModelError):
    """The control plane has no key directory, so it cannot check release signatures."""


class DeviceError(ControlPlaneError):
    """An enrollment or device-inventory operation was refused."""


class InvalidCsr(DeviceError):
    """A certificate signing request cannot be signed; permanent for that CSR."""


class EnrollmentRefused(DeviceError):
    """The enrollment token is unknown, expired or already used; ask for a new one."""


class DeviceExists(DeviceError):
    """The device id is already enrolled and not revoked; revoke it before re-enrolling."""


class UnknownDevice(DeviceError):
    """No device has the given id."""


class CertificateAuthorityError(ControlPlaneError):
    """The CA's files are unreadable or do not belong together; restore them from a backup."""

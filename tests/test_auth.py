"""Salted checksums exactly as co2logserver 0.1.2 computes and checks them."""

from twisted.trial import unittest

from co2logd.errors import IngestError
from co2logd.ingest.auth import Authenticator, DownloadAuthenticator, salted_checksum, salted_matches
from co2logd.settings import KEYS
from tests.helpers import README_JSON, README_MD5, README_SALT, make_settings

REGEX = KEYS["SALTED_CHECKSUM_HEADER_REGEX"].default


class ChecksumTests(unittest.TestCase):
    """The checksum itself."""

    def test_readme_example(self):
        """md5(payload + salt) of the original README is b71e91fe…"""
        self.assertEqual(salted_checksum(README_JSON, README_SALT, "md5"), README_MD5)


class MatchTests(unittest.TestCase):
    """Header parsing and matching."""

    def test_header_names_are_case_insensitive(self):
        """content-md5-salted and CONTENT-MD5-SALTED both count; upper-case hex too."""
        for name in ("content-md5-salted", "CONTENT-MD5-SALTED", "Content-MD5-Salted"):
            matches = salted_matches(README_JSON, {name: README_MD5.upper()}, [README_SALT], REGEX)
            self.assertEqual(matches, {"md5": README_SALT})

    def test_wrong_checksum_does_not_match(self):
        """A digest of the right length that is wrong maps to None."""
        matches = salted_matches(README_JSON, {"Content-MD5-Salted": "0" * 32}, [README_SALT], REGEX)
        self.assertEqual(matches, {"md5": None})

    def test_malformed_headers_are_ignored(self):
        """Wrong length or unknown algorithm: ignored, as in co2logserver."""
        headers = [("Content-MD5-Salted", "abc"), ("Content-FOO-Salted", "0" * 32)]
        self.assertEqual(salted_matches(README_JSON, headers, [README_SALT], REGEX), {})

    def test_any_salt_may_match(self):
        """Every configured salt is tried."""
        checksum = salted_checksum(README_JSON, "second", "sha256")
        matches = salted_matches(README_JSON, [(b"Content-SHA256-Salted", checksum.encode())], ["first", "second"], REGEX)
        self.assertEqual(matches, {"sha256": "second"})


class AuthenticatorTests(unittest.TestCase):
    """Required auth, the checker, and the two auth columns."""

    def setUp(self):
        self.auth = Authenticator.from_settings(make_settings(CHECKSUM_SALTS=[README_SALT]))

    def test_missing_is_403(self):
        """No checksum header when required: 403 naming the header pattern and algorithms."""
        e = self.assertRaises(IngestError, self.auth.check, README_JSON, {}, True)
        self.assertEqual((e.status, e.reason), (403, "auth-missing"))
        self.assertIn("Content-", e.message)
        self.assertIn("md5", e.message)

    def test_invalid_is_403(self):
        """A wrong checksum when required: 403 invalid."""
        e = self.assertRaises(IngestError, self.auth.check, README_JSON, {"Content-MD5-Salted": "1" * 32}, True)
        self.assertEqual((e.status, e.reason), (403, "auth-invalid"))

    def test_one_wrong_of_two_fails_default_checker(self):
        """The default checker wants every given checksum to match."""
        headers = {"Content-MD5-Salted": README_MD5, "Content-SHA1-Salted": "1" * 40}
        self.assertRaises(IngestError, self.auth.check, README_JSON, headers, True)

    def test_not_required_still_records(self):
        """Without required auth the matches are still computed, for the auth columns."""
        headers = {"Content-MD5-Salted": README_MD5, "Content-SHA1-Salted": "1" * 40}
        matches = self.auth.check(README_JSON, headers, False)
        self.assertEqual(self.auth.columns(matches), ("md5", "sha1"))

    def test_columns_null_without_salts(self):
        """With no salts configured both auth columns are NULL, as in co2logserver."""
        auth = Authenticator.from_settings(make_settings())
        self.assertEqual(auth.columns({}), (None, None))

    def test_custom_checker(self):
        """AUTH_CHECKER decides; a checker that raises refuses."""
        auth = Authenticator.from_settings(
            make_settings(CHECKSUM_SALTS=[README_SALT], AUTH_CHECKER=lambda m: "sha256" in m)
        )
        self.assertRaises(IngestError, auth.check, README_JSON, {"Content-MD5-Salted": README_MD5}, True)
        broken = Authenticator.from_settings(make_settings(CHECKSUM_SALTS=[README_SALT], AUTH_CHECKER=lambda m: 1 / 0))
        self.assertRaises(IngestError, broken.check, README_JSON, {"Content-MD5-Salted": README_MD5}, True)
        self.flushLoggedErrors(ZeroDivisionError)


class DownloadAuthenticatorTests(unittest.TestCase):
    """Signed downloads: the path and query, with the replay claim line when protection is on."""

    def test_claim_line_is_signed_with_the_path(self):
        """With REPLAY_PROTECTION the checksum covers ``counter:N``, a newline and the path; the path alone is refused."""
        signed = DownloadAuthenticator.from_settings(make_settings(CHECKSUM_SALTS=["s"], REPLAY_PROTECTION="optional"))
        path = b"/download?format=csv"
        good = [("Content-Counter", "5"), ("Content-MD5-Salted", salted_checksum(b"counter:5\n" + path, "s", "md5"))]
        self.assertEqual(signed.check(path, good), {"md5": "s"})
        bad = [("Content-Counter", "5"), ("Content-MD5-Salted", salted_checksum(path, "s", "md5"))]
        with self.assertRaises(IngestError) as caught:
            signed.check(path, bad)
        self.assertEqual(caught.exception.reason, "auth-invalid")

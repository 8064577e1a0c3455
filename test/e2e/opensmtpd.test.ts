/**
 * lookup = "opensmtpd": relayctl's promise proved through a real OpenSMTPD 6.8 run
 * from Debian's unpacked package (test/mta-debs.sh), with the server as root and as an
 * unprivileged user reloading through smtpctl_socket; see mtaSuite and smtpctlSocketSuite in mta.ts.
 */
import { mtaSuite, smtpctlSocketSuite } from "./mta.ts";

mtaSuite("opensmtpd");
smtpctlSocketSuite();

/**
 * lookup = "opensmtpd": relayctl's promise proved through a real OpenSMTPD 6.8 run
 * from Debian's unpacked package (test/mta-debs.sh); see mtaSuite in mta.ts.
 */
import { mtaSuite } from "./mta.ts";

mtaSuite("opensmtpd");

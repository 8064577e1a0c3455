/**
 * lookup = "exim": relayctl's promise proved through a real Exim 4.96 run
 * from Debian's unpacked package (test/mta-debs.sh); see mtaSuite in mta.ts.
 */
import { mtaSuite } from "./mta.ts";

mtaSuite("exim");

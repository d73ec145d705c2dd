// The deterministic simulation, half of the CI campaign (the other half runs in parallel in another file).
import { REGRESSION_SEEDS } from './campaign.js';
import { describeCampaign } from './simulation-suite.js';

describeCampaign(1, 250, REGRESSION_SEEDS);

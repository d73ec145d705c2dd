// The deterministic simulation, the other half of the CI campaign.
import { describeCampaign } from './simulation-suite.js';

describeCampaign(251, 250);

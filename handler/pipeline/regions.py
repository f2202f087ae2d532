"""Where the clouds' regions are, for ordering deployments by their distance from the gateway's region.

A deployment's round trip is estimated from the great-circle distance between its region and the gateway's where the
config measured none (`gateway.region_latency_ms`). The places are those the clouds publish: AWS's regions (every
partition but the isolated ones, whose places are not public), Azure's (`az account list-locations`'s coordinates,
a newer region's city from Microsoft's list of regions) and Google Cloud's (the city each of its regions is in).
A region the table does not know is refused in a deployment (`unplaced`) and warned of as the gateway's own: its
distance could only be guessed, and every deployment in it was ranked last, the gateway's own Bedrock region too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# AWS: botocore's endpoint data names them (each partition's `regions`); the places are AWS's own names for them.
AWS_REGIONS: dict[str, tuple[float, float]] = {
    "us-east-1": (38.9, -77.4),  # N. Virginia
    "us-east-2": (40.0, -83.0),  # Ohio
    "us-west-1": (37.4, -121.9),  # N. California
    "us-west-2": (45.8, -119.7),  # Oregon
    "ca-central-1": (45.5, -73.6),  # Montréal
    "ca-west-1": (51.0, -114.1),  # Calgary
    "mx-central-1": (20.6, -100.4),  # Querétaro
    "sa-east-1": (-23.5, -46.6),  # São Paulo
    "eu-west-1": (53.3, -6.3),  # Ireland
    "eu-west-2": (51.5, -0.1),  # London
    "eu-west-3": (48.9, 2.4),  # Paris
    "eu-central-1": (50.1, 8.7),  # Frankfurt
    "eu-central-2": (47.4, 8.5),  # Zurich
    "eu-north-1": (59.3, 18.1),  # Stockholm
    "eu-south-1": (45.5, 9.2),  # Milan
    "eu-south-2": (41.6, -0.9),  # Spain (Aragón)
    "me-south-1": (26.1, 50.6),  # Bahrain
    "me-central-1": (24.5, 54.4),  # UAE
    "il-central-1": (32.1, 34.8),  # Tel Aviv
    "af-south-1": (-33.9, 18.4),  # Cape Town
    "ap-east-1": (22.3, 114.2),  # Hong Kong
    "ap-east-2": (25.0, 121.5),  # Taipei
    "ap-south-1": (19.1, 72.9),  # Mumbai
    "ap-south-2": (17.4, 78.5),  # Hyderabad
    "ap-northeast-1": (35.7, 139.7),  # Tokyo
    "ap-northeast-2": (37.6, 127.0),  # Seoul
    "ap-northeast-3": (34.7, 135.5),  # Osaka
    "ap-southeast-1": (1.3, 103.8),  # Singapore
    "ap-southeast-2": (-33.9, 151.2),  # Sydney
    "ap-southeast-3": (-6.2, 106.8),  # Jakarta
    "ap-southeast-4": (-37.8, 145.0),  # Melbourne
    "ap-southeast-5": (3.1, 101.7),  # Malaysia (Kuala Lumpur)
    "ap-southeast-6": (-36.8, 174.8),  # New Zealand (Auckland)
    "ap-southeast-7": (13.8, 100.5),  # Thailand (Bangkok)
    "cn-north-1": (39.9, 116.4),  # Beijing
    "cn-northwest-1": (37.5, 105.2),  # Ningxia
    "us-gov-east-1": (40.0, -83.0),  # GovCloud (US-East): Ohio
    "us-gov-west-1": (45.6, -121.2),  # GovCloud (US-West): Oregon
    "eusc-de-east-1": (52.4, 13.1),  # European Sovereign Cloud: Brandenburg
}

AZURE_REGIONS: dict[str, tuple[float, float]] = {
    "eastus": (37.3719, -79.8164),  # Virginia
    "eastus2": (36.6681, -78.3889),  # Virginia
    "centralus": (41.5908, -93.6208),  # Iowa
    "northcentralus": (41.8819, -87.6278),  # Illinois
    "southcentralus": (29.4167, -98.5),  # Texas
    "westcentralus": (40.89, -110.234),  # Wyoming
    "westus": (37.783, -122.417),  # California
    "westus2": (47.233, -119.852),  # Washington
    "westus3": (33.448, -112.074),  # Phoenix
    "canadacentral": (43.653, -79.383),  # Toronto
    "canadaeast": (46.817, -71.217),  # Quebec
    "mexicocentral": (20.59, -100.39),  # Querétaro State
    "brazilsouth": (-23.55, -46.633),  # Sao Paulo State
    "brazilsoutheast": (-22.903, -43.208),  # Rio
    "chilecentral": (-33.45, -70.67),  # Santiago
    "northeurope": (53.3478, -6.2597),  # Ireland
    "westeurope": (52.3667, 4.9),  # Netherlands
    "uksouth": (50.941, -0.799),  # London
    "ukwest": (53.427, -3.084),  # Cardiff
    "francecentral": (46.3772, 2.373),  # Paris
    "francesouth": (43.8345, 2.1972),  # Marseille
    "germanywestcentral": (50.111, 8.682),  # Frankfurt
    "germanynorth": (53.074, 8.806),  # Berlin
    "switzerlandnorth": (47.452, 8.565),  # Zurich
    "switzerlandwest": (46.204, 6.143),  # Geneva
    "norwayeast": (59.914, 10.752),  # Oslo
    "norwaywest": (58.97, 5.733),  # Stavanger
    "swedencentral": (60.675, 17.141),  # Gävle
    "swedensouth": (55.6, 13.0),  # Malmö
    "polandcentral": (52.23, 21.01),  # Warsaw
    "italynorth": (45.46, 9.19),  # Milan
    "spaincentral": (40.42, -3.7),  # Madrid
    "austriaeast": (48.21, 16.37),  # Vienna
    "belgiumcentral": (50.85, 4.35),  # Brussels
    "denmarkeast": (55.68, 12.57),  # Copenhagen
    "israelcentral": (32.1, 34.8),  # Israel
    "qatarcentral": (25.551, 51.439),  # Doha
    "uaenorth": (25.267, 55.317),  # Dubai
    "uaecentral": (24.467, 54.367),  # Abu Dhabi
    "southafricanorth": (-25.731, 28.218),  # Johannesburg
    "southafricawest": (-34.076, 18.843),  # Cape Town
    "centralindia": (18.5822, 73.9197),  # Pune
    "southindia": (12.9822, 80.1636),  # Chennai
    "westindia": (19.088, 72.868),  # Mumbai
    "jioindiacentral": (21.147, 79.089),  # Nagpur
    "jioindiawest": (22.471, 70.058),  # Jamnagar
    "eastasia": (22.267, 114.188),  # Hong Kong
    "southeastasia": (1.283, 103.833),  # Singapore
    "japaneast": (35.68, 139.77),  # Tokyo, Saitama
    "japanwest": (34.6939, 135.5022),  # Osaka
    "koreacentral": (37.5665, 126.978),  # Seoul
    "koreasouth": (35.1796, 129.0756),  # Busan
    "australiaeast": (-33.86, 151.2094),  # New South Wales
    "australiasoutheast": (-37.8136, 144.9631),  # Victoria
    "australiacentral": (-35.3075, 149.1244),  # Canberra
    "australiacentral2": (-35.3075, 149.1244),  # Canberra
    "newzealandnorth": (-36.85, 174.76),  # Auckland
    "indonesiacentral": (-6.2, 106.85),  # Jakarta
    "malaysiawest": (3.14, 101.69),  # Kuala Lumpur
    "usgovvirginia": (37.37, -79.82),  # Azure Government: Virginia
    "usgovarizona": (33.45, -112.07),  # Azure Government: Arizona
    "usgovtexas": (29.42, -98.49),  # Azure Government: Texas
}

GOOGLE_CLOUD_REGIONS: dict[str, tuple[float, float]] = {
    "us-central1": (41.26, -95.86),  # Council Bluffs, Iowa
    "us-east1": (33.2, -80.0),  # Moncks Corner, South Carolina
    "us-east4": (39.0, -77.5),  # Ashburn, Virginia
    "us-east5": (40.0, -83.0),  # Columbus, Ohio
    "us-south1": (32.8, -96.8),  # Dallas, Texas
    "us-west1": (45.6, -121.2),  # The Dalles, Oregon
    "us-west2": (34.05, -118.24),  # Los Angeles, California
    "us-west3": (40.76, -111.89),  # Salt Lake City, Utah
    "us-west4": (36.17, -115.14),  # Las Vegas, Nevada
    "northamerica-northeast1": (45.5, -73.6),  # Montréal
    "northamerica-northeast2": (43.7, -79.4),  # Toronto
    "northamerica-south1": (20.6, -100.4),  # Querétaro
    "southamerica-east1": (-23.5, -46.8),  # Osasco, São Paulo
    "southamerica-west1": (-33.4, -70.7),  # Santiago
    "europe-west1": (50.47, 3.82),  # St. Ghislain, Belgium
    "europe-west2": (51.5, -0.1),  # London
    "europe-west3": (50.1, 8.7),  # Frankfurt
    "europe-west4": (53.44, 6.83),  # Eemshaven, Netherlands
    "europe-west6": (47.4, 8.5),  # Zurich
    "europe-west8": (45.5, 9.2),  # Milan
    "europe-west9": (48.9, 2.4),  # Paris
    "europe-west10": (52.5, 13.4),  # Berlin
    "europe-west12": (45.1, 7.7),  # Turin
    "europe-southwest1": (40.4, -3.7),  # Madrid
    "europe-central2": (52.2, 21.0),  # Warsaw
    "europe-north1": (60.57, 27.2),  # Hamina, Finland
    "europe-north2": (59.3, 18.1),  # Stockholm
    "me-west1": (32.1, 34.8),  # Tel Aviv
    "me-central1": (25.3, 51.5),  # Doha
    "me-central2": (26.4, 50.1),  # Dammam
    "africa-south1": (-26.2, 28.0),  # Johannesburg
    "asia-south1": (19.1, 72.9),  # Mumbai
    "asia-south2": (28.6, 77.2),  # Delhi
    "asia-southeast1": (1.34, 103.7),  # Jurong West, Singapore
    "asia-southeast2": (-6.2, 106.8),  # Jakarta
    "asia-east1": (24.07, 120.54),  # Changhua County, Taiwan
    "asia-east2": (22.3, 114.2),  # Hong Kong
    "asia-northeast1": (35.7, 139.7),  # Tokyo
    "asia-northeast2": (34.7, 135.5),  # Osaka
    "asia-northeast3": (37.6, 127.0),  # Seoul
    "australia-southeast1": (-33.9, 151.2),  # Sydney
    "australia-southeast2": (-37.8, 145.0),  # Melbourne
}

# Every known region's place (latitude, longitude); the clouds' names do not overlap (AWS's `us-east-1`, Google
# Cloud's `us-east1`, Azure's `eastus`).
REGION_COORDINATES: dict[str, tuple[float, float]] = {**AWS_REGIONS, **AZURE_REGIONS, **GOOGLE_CLOUD_REGIONS}
GLOBAL = "global"
# Provider-global endpoints (api.openai.com and the like) mostly serve from the US east coast.
GLOBAL_LOCATION = "us-east-1"
# The distance of a region the table does not know (half the Earth's circumference and more: farther than any).
UNKNOWN_KM = 40_000.0


def distance_km(a: str, b: str) -> float:
    """Great-circle distance between two regions: none from a region to itself (known or not: a gateway in a region
    the table lacks ranked its own Bedrock region last), `UNKNOWN_KM` to a region the table does not know."""
    if a == b:
        return 0.0
    pa = REGION_COORDINATES.get(GLOBAL_LOCATION if a == GLOBAL else a)
    pb = REGION_COORDINATES.get(GLOBAL_LOCATION if b == GLOBAL else b)
    if pa is None or pb is None:
        return UNKNOWN_KM
    lat1, lon1, lat2, lon2 = map(math.radians, (*pa, *pb))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 12_742 * math.asin(math.sqrt(h))


def placed(region: str, latency_ms: Mapping[str, Mapping[str, float]]) -> bool:
    """Whether the gateway can place `region` among the others: `global`, a region of the table, or one the config
    measures round trips from or to (`gateway.region_latency_ms`: a place of the operator's own, as a data centre)."""
    if region == GLOBAL or region in REGION_COORDINATES or region in latency_ms:
        return True
    return any(region in measured for measured in latency_ms.values())


def unplaced(region: str) -> str:
    """What is wrong with a deployment's region the gateway cannot place (`placed`), the nearest known name offered:
    ranked last whatever its distance, a misspelt `westeuorpe` sent the requests it should have served across an
    ocean, and nothing said so."""
    import difflib  # (a config's error alone needs it: not imported at every start)

    near = difflib.get_close_matches(region, REGION_COORDINATES, n=1, cutoff=0.75)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    return (
        f"'{region}' is not a region the gateway knows the place of{hint}: name an AWS, Azure or Google Cloud region, "
        f"or give the round trip to it from the gateway's region in gateway.region_latency_ms (a place of your own)"
    )

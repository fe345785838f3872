"""Sets up and inspects the AWS emulators for the dns-sidecar suite, with boto3
(installed with moto into target/ci-venv by tests/ci.sh). Prints JSON.

  aws_fixture.py create-zone ENDPOINT NAME            -> {"zone": "Z..."}
  aws_fixture.py list ENDPOINT ZONE                   -> [{"name","type","ttl","values","set"}...]
  aws_fixture.py list-all ENDPOINT ZONE               -> the same, NS and SOA included
  aws_fixture.py create ENDPOINT ZONE NAME TYPE VALUE -> {"change": "..."}   (a record someone else owns)
  aws_fixture.py upsert ENDPOINT ZONE NAME TYPE VALUE -> {"change": "..."}   (someone edits a record)
  aws_fixture.py eni ENDPOINT PRIVATE_IP              -> {"interface": "eni-...", "public_ip": "...", "mac": "..."}
  aws_fixture.py eni-private ENDPOINT PRIVATE_IP      -> {"interface": "eni-..."}   (no public IP)
  aws_fixture.py sample ENDPOINT ZONE NAME            (until killed: one JSON line per reading of NAME,
      {"a": [values of the A record], "markers": [values of its TXT markers]}, every 20 ms)
  aws_fixture.py ecs-desired ENDPOINT CLUSTER SERVICE N  -> {"desired": N}   (someone scales the service)
  aws_fixture.py eni-twins ENDPOINT PRIVATE_IP        -> [{"interface","mac","public_ip","vpc"}, ...]
      (two VPCs with the same CIDR, each with an interface holding PRIVATE_IP and an Elastic IP)
  aws_fixture.py create-legacy ENDPOINT ZONE NAME VALUE OWNER  (a record and its marker as dns-sidecar
      before 0.2 wrote them: TTL 60, the marker at a-NAME, owner only)
  aws_fixture.py delete-legacy ENDPOINT ZONE NAME VALUE OWNER  (that version's cleanup batch)
      -> {"change": "..."} or {"error": "<code>: <message>"}
"""

import json
import sys
import time

import boto3

CREDS = dict(aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")


def client(service, endpoint):
    return boto3.client(service, endpoint_url=endpoint, **CREDS)


def main(argv):
    command, endpoint = argv[1], argv[2]
    if command == "create-zone":
        r53 = client("route53", endpoint)
        zone = r53.create_hosted_zone(Name=argv[3], CallerReference=argv[3] + "-test")
        print(json.dumps({"zone": zone["HostedZone"]["Id"].split("/")[-1]}))
    elif command == "ecs-desired":
        ecs = client("ecs", endpoint)
        service = ecs.update_service(cluster=argv[3], service=argv[4], desiredCount=int(argv[5]))["service"]
        print(json.dumps({"desired": service["desiredCount"]}))
    elif command in ("list", "list-all"):
        r53 = client("route53", endpoint)
        sets = r53.list_resource_record_sets(HostedZoneId=argv[3])["ResourceRecordSets"]
        print(json.dumps([
            {
                "name": s["Name"].lower(),
                "type": s["Type"],
                "ttl": s.get("TTL"),
                "values": [r["Value"] for r in s.get("ResourceRecords", [])],
                "set": s.get("SetIdentifier"),
            }
            for s in sets
            if command == "list-all" or s["Type"] not in ("NS", "SOA")
        ]))
    elif command in ("create", "upsert"):
        r53 = client("route53", endpoint)
        zone, name, rtype, value = argv[3:7]
        out = r53.change_resource_record_sets(
            HostedZoneId=zone,
            ChangeBatch={"Changes": [{
                "Action": command.upper(),
                "ResourceRecordSet": {"Name": name, "Type": rtype, "TTL": 300, "ResourceRecords": [{"Value": value}]},
            }]},
        )
        print(json.dumps({"change": out["ChangeInfo"]["Id"]}))
    elif command in ("eni", "eni-private"):
        ec2 = client("ec2", endpoint)
        private_ip = argv[3]
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
        eni = ec2.create_network_interface(SubnetId=subnet, PrivateIpAddress=private_ip)["NetworkInterface"]
        if command == "eni-private":
            print(json.dumps({"interface": eni["NetworkInterfaceId"], "mac": eni["MacAddress"]}))
            return
        eip = ec2.allocate_address(Domain="vpc")
        ec2.associate_address(AllocationId=eip["AllocationId"], NetworkInterfaceId=eni["NetworkInterfaceId"])
        print(json.dumps({"interface": eni["NetworkInterfaceId"], "public_ip": eip["PublicIp"], "mac": eni["MacAddress"]}))
    elif command == "sample":
        r53 = client("route53", endpoint)
        zone, name = argv[3], argv[4].lower()
        markers = ("_dns-sidecar-a." + name, "a-" + name)
        while True:
            sets = r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
            reading = {
                "a": sorted(r["Value"] for s in sets if s["Name"].lower() == name and s["Type"] == "A"
                            for r in s.get("ResourceRecords", [])),
                "markers": sorted(r["Value"] for s in sets if s["Name"].lower() in markers and s["Type"] == "TXT"
                                  for r in s.get("ResourceRecords", [])),
            }
            print(json.dumps(reading), flush=True)
            time.sleep(0.02)
    elif command == "eni-twins":
        ec2 = client("ec2", endpoint)
        private_ip = argv[3]
        twins = []
        for _ in range(2):
            vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
            subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
            eni = ec2.create_network_interface(SubnetId=subnet, PrivateIpAddress=private_ip)["NetworkInterface"]
            eip = ec2.allocate_address(Domain="vpc")
            ec2.associate_address(AllocationId=eip["AllocationId"], NetworkInterfaceId=eni["NetworkInterfaceId"])
            twins.append({"interface": eni["NetworkInterfaceId"], "mac": eni["MacAddress"],
                          "public_ip": eip["PublicIp"], "vpc": vpc})
        print(json.dumps(twins))
    elif command in ("create-legacy", "delete-legacy"):
        r53 = client("route53", endpoint)
        zone, name, value, owner = argv[3:7]
        action = "CREATE" if command == "create-legacy" else "DELETE"
        sets = [
            {"Name": name, "Type": "A", "TTL": 60, "ResourceRecords": [{"Value": value}]},
            {"Name": "a-" + name, "Type": "TXT", "TTL": 60,
             "ResourceRecords": [{"Value": f'"heritage=dns-sidecar,owner={owner}"'}]},
        ]
        try:
            out = r53.change_resource_record_sets(
                HostedZoneId=zone,
                ChangeBatch={"Changes": [{"Action": action, "ResourceRecordSet": s} for s in sets]},
            )
            print(json.dumps({"change": out["ChangeInfo"]["Id"]}))
        except r53.exceptions.ClientError as e:
            error = e.response["Error"]
            print(json.dumps({"error": f"{error['Code']}: {error['Message']}"}))
    elif command == "put-parameter":
        ssm = client("ssm", endpoint)
        name, value = argv[3:5]
        ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=True)
        print(json.dumps({"name": name}))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv)

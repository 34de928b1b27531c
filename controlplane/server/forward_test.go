package server

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// The forwarder decides from this table which server may answer a call:
// a write answered by a follower would be lost, a consistent read answered
// by a follower could be stale, and a local call forwarded would describe
// (or make leave) the wrong server.
func TestClassifyProcedures(t *testing.T) {
	procs := classifyProcedures()

	want := map[string]procKind{
		droverv1connect.ModelServiceListModelsProcedure:        procRead,
		droverv1connect.ModelServiceGetModelProcedure:          procRead,
		droverv1connect.ModelServiceListVersionsProcedure:      procRead,
		droverv1connect.ModelServiceGetVersionProcedure:        procRead,
		droverv1connect.ModelServiceCreateModelProcedure:       procWrite,
		droverv1connect.ModelServiceDeleteModelProcedure:       procWrite,
		droverv1connect.ModelServiceCreateVersionProcedure:     procWrite,
		droverv1connect.ModelServiceSetAliasProcedure:          procWrite,
		droverv1connect.ModelServiceDeleteAliasProcedure:       procWrite,
		droverv1connect.ACLServiceBootstrapProcedure:           procWrite,
		droverv1connect.AuditServiceListEventsProcedure:        procRead,
		droverv1connect.ClusterServiceListPeersProcedure:       procRead,
		droverv1connect.ClusterServiceRemovePeerProcedure:      procWrite,
		droverv1connect.ClusterServiceRestoreSnapshotProcedure: procWrite,
		droverv1connect.ClusterServiceGetStatusProcedure:       procLocal,
		droverv1connect.ClusterServiceGetServerInfoProcedure:   procLocal,
		droverv1connect.ClusterServiceLeaveProcedure:           procLocal,
		droverv1connect.TokenServiceCreateTokenProcedure:       procWrite,
		droverv1connect.TokenServiceListTokensProcedure:        procRead,
		droverv1connect.TokenServiceRevokeTokenProcedure:       procWrite,
		droverv1connect.NodeServiceListNodesProcedure:          procRead,
		droverv1connect.NodeServiceGetNodeProcedure:            procRead,
		droverv1connect.NodeServiceDrainNodeProcedure:          procWrite,
		droverv1connect.NodeServiceLabelNodeProcedure:          procWrite,
		droverv1connect.NodeServiceRevokeNodeProcedure:         procWrite,
		// Any server knows the CA; enrollment and heartbeats need the
		// leader (the heartbeat deadlines live there).
		droverv1connect.AgentServiceGetClusterInfoProcedure:   procLocal,
		droverv1connect.AgentServiceEnrollProcedure:           procWrite,
		droverv1connect.AgentServiceRegisterProcedure:         procWrite,
		droverv1connect.AgentServiceRenewCertificateProcedure: procWrite,
		droverv1connect.AgentServiceHeartbeatProcedure:        procWrite,
		// A plan reads the state a following apply would land on.
		droverv1connect.DeploymentServiceApplyDeploymentProcedure:  procWrite,
		droverv1connect.DeploymentServicePlanDeploymentProcedure:   procRead,
		droverv1connect.DeploymentServiceListDeploymentsProcedure:  procRead,
		droverv1connect.DeploymentServiceGetDeploymentProcedure:    procRead,
		droverv1connect.DeploymentServiceDeleteDeploymentProcedure: procWrite,
	}
	names := map[procKind]string{procRead: "read", procWrite: "write", procLocal: "local"}
	for proc, kind := range want {
		got, ok := procs[proc]
		if !ok {
			t.Errorf("%s is not classified; the forwarder would serve it wherever it lands", proc)
			continue
		}
		if got != kind {
			t.Errorf("%s is a %s, want %s", proc, names[got], names[kind])
		}
	}

	// SaveSnapshot has no NO_SIDE_EFFECTS option in the schema, so it is
	// sent to the leader like a write; the leader is where a consistent
	// snapshot comes from anyway.
	if got := procs[droverv1connect.ClusterServiceSaveSnapshotProcedure]; got == procLocal {
		t.Errorf("SaveSnapshot is local; a follower would stream its own, possibly stale, state")
	}

	// Every method of every served service is classified, and nothing
	// else is.
	all := map[string]bool{}
	for path := range servedMethods() {
		all[path] = true
	}
	for proc := range all {
		if _, ok := procs[proc]; !ok {
			t.Errorf("%s is not classified", proc)
		}
	}
	for proc := range procs {
		if !all[proc] {
			t.Errorf("%s is classified but no service has it", proc)
		}
	}
	// Every service of the schema is among them: one left out would be
	// answered by a follower instead of forwarded to the leader.
	protoregistry.GlobalFiles.RangeFilesByPackage("drover.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			svc := fd.Services().Get(i)
			for j := range svc.Methods().Len() {
				if proc := "/" + string(svc.FullName()) + "/" + string(svc.Methods().Get(j).Name()); !all[proc] {
					t.Errorf("%s is in the schema but not in servedMethods", proc)
				}
			}
		}
		return true
	})

	// A new ModelService method needs a deliberate entry in want.
	svc := droverv1.File_drover_v1_registry_proto.Services().ByName("ModelService")
	for j := range svc.Methods().Len() {
		m := svc.Methods().Get(j)
		proc := "/" + string(svc.FullName()) + "/" + string(m.Name())
		_, isWant := want[proc]
		if !isWant {
			t.Errorf("ModelService.%s is new: add it to this test", m.Name())
		}
	}
}
